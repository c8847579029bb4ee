"""LayerNormLSTM and LayerNormGRU against an independent PyTorch implementation of the same
formula, written here with per-step torch operations (the layer norm spelled out as mean and
variance, autograd for every gradient); skipped without PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")


def layer_norm(v, eps):
    """LN over the last axis, without gain or bias."""
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + eps)


def torch_ln_stack(cell, x, states, params, num_layers, bidirectional, eps):
    """A layer-normalised stack over x (T, B, I): per layer and direction a Python loop over the
    steps; the dropout-free reference. Returns output and the final states (L*D, B, H)."""
    D = 2 if bidirectional else 1
    finals = [[] for _ in states]
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(D):
            k = layer * D + direction
            p = {
                name[: name.rindex("_l")]: value
                for name, value in params.items()
                if name.endswith(f"_l{layer}" + ("_reverse" if direction else ""))
            }
            seq = layer_input if direction == 0 else layer_input.flip(0)
            h = states[0][k]
            c = states[1][k] if cell == "lstm" else None
            ys = []
            for t in range(seq.shape[0]):
                a = p["ln_ih_weight"] * layer_norm(seq[t] @ p["weight_ih"].T, eps)
                b = p["ln_hh_weight"] * layer_norm(h @ p["weight_hh"].T, eps)
                if cell == "lstm":
                    pre = a + b + p["bias"]
                    i, f, g, o = pre.chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    u = p["ln_cell_weight"] * layer_norm(c, eps) + p["ln_cell_bias"]
                    h = torch.sigmoid(o) * torch.tanh(u)
                else:
                    a, b = a + p["bias_ih"], b + p["bias_hh"]
                    H = h.shape[1]
                    r = torch.sigmoid(a[:, :H] + b[:, :H])
                    z = torch.sigmoid(a[:, H : 2 * H] + b[:, H : 2 * H])
                    n = torch.tanh(a[:, 2 * H :] + r * b[:, 2 * H :])
                    h = (1 - z) * n + z * h
                ys.append(h)
            y = torch.stack(ys)
            outputs.append(y if direction == 0 else y.flip(0))
            finals[0].append(h)
            if cell == "lstm":
                finals[1].append(c)
        layer_input = torch.cat(outputs, dim=2)
    return layer_input, [torch.stack(f) for f in finals]


@pytest.mark.parametrize(
    "options",
    [{}, {"num_layers": 2, "batch_first": True}, {"num_layers": 2, "bidirectional": True}],
    ids=["1", "2bf", "2bidir"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_per_step_torch(cell, dtype, options):
    cls = fusedrnn.LayerNormLSTM if cell == "lstm" else fusedrnn.LayerNormGRU
    ours = cls(5, 6, seed=0, dtype=dtype, eps=1e-4, **options)
    rng = np.random.default_rng(1)
    for p in ours.parameters():  # gains away from 1, the cell LN's bias away from 0
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    L, D = ours.num_layers, ours.num_directions
    T, B = 7, 3
    batch_first = options.get("batch_first", False)
    x = rng.standard_normal((B, T, 5) if batch_first else (T, B, 5)).astype(dtype)
    states = [rng.standard_normal((L * D, B, 6)).astype(dtype) for _ in range(1 + (cell == "lstm"))]
    out, h_n = ours(x, tuple(states) if cell == "lstm" else states[0])
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_finals = [rng.standard_normal(s.shape).astype(dtype) for s in states]
    dx, dhx = ours.backward(d_out, tuple(d_finals) if cell == "lstm" else d_finals[0])

    x_t = torch.from_numpy(x).requires_grad_(True)
    states_t = [torch.from_numpy(s).requires_grad_(True) for s in states]
    params_t = {
        n: torch.from_numpy(p.copy()).requires_grad_(True) for n, p in ours.named_parameters()
    }
    seq = x_t.transpose(0, 1) if batch_first else x_t
    out_t, finals_t = torch_ln_stack(cell, seq, states_t, params_t, L, D == 2, 1e-4)
    out_t = out_t.transpose(0, 1) if batch_first else out_t
    torch.autograd.backward([out_t, *finals_t], [torch.from_numpy(d) for d in (d_out, *d_finals)])

    assert_close(out, out_t.detach().numpy(), dtype, "output")
    finals = h_n if cell == "lstm" else (h_n,)
    for k, (got, want) in enumerate(zip(finals, finals_t)):
        assert_close(got, want.detach().numpy(), dtype, f"final state {k}")
    assert_close(dx, x_t.grad.numpy(), dtype, "dx")
    for k, (got, want) in enumerate(zip(dhx if cell == "lstm" else (dhx,), states_t)):
        assert_close(got, want.grad.numpy(), dtype, f"d state {k}")
    for name, p in params_t.items():
        assert_close(ours.grads[name], p.grad.numpy(), dtype, "d" + name)
