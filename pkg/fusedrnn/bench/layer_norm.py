"""The benchmark's layer-norm rows: `fusedrnn.LayerNorm`'s kernels against ``torch.nn.LayerNorm``
(variant ``layer-norm``), and the layer-normalised LSTM (``ln-lstm``) and GRU (``ln-gru``)
against the per-step PyTorch module users write today (``torch.nn.Linear`` and
``torch.nn.LayerNorm`` in a Python loop over the steps, autograd for the backward).

A ``layer-norm`` case normalises the T*B rows of x (T, B, H) over H (I = H is not used). The
inputs, passes and outputs follow `fusedrnn.bench.implementations`, whose functions call these
for the three variants.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .._spec import LN_CELL_PARAMETERS
from .cases import TRAINING_PASSES, Case

Outputs = dict[str, np.ndarray]
LN_CELLS = {"ln_lstm": "lstm", "ln_gru": "gru"}  # the variants' cell -> the kernel family
CELLS = (*LN_CELLS, "layer_norm")
# The LN gains around these values. The recurrent norm's at 0.5: at 1, with these weights, the
# LN-LSTM's gradients grew 300-fold over 100 steps (the norm scales small states up), and
# float32's rounding alone then exceeded the validation's tolerance (the reference's own float32
# error was 2e-3 of the magnitude); at 0.5 it is 3e-6.
_GAINS = {"ln_ih_weight": 1.0, "ln_hh_weight": 0.5, "ln_cell_weight": 1.0}


def make_inputs(case: Case, dtype: np.dtype | type, rng: np.random.Generator) -> Outputs:
    """``x`` (T, B, I) or, for layer-norm, (T*B, H), the parameters by role (weights and biases
    uniform in +-1/sqrt(H), the LN gains around `_GAINS`) and the output gradients."""
    T, B, I, H = case.T, case.B, case.I, case.H
    bound = 1 / np.sqrt(H)
    if case.variant.cell == "layer_norm":
        arrays = {
            "x": rng.standard_normal((T * B, H)),
            "weight": 1 + rng.uniform(-0.5, 0.5, H),
            "bias": rng.uniform(-0.5, 0.5, H),
            "dy": rng.standard_normal((T * B, H)),
        }
        return {name: a.astype(dtype) for name, a in arrays.items()}
    family = LN_CELLS[case.variant.cell]
    G = {"lstm": 4, "gru": 3}[family] * H
    shapes = {
        "weight_ih": (G, I),
        "weight_hh": (G, H),
        "ln_cell_weight": (H,),
        "ln_cell_bias": (H,),
    }
    arrays = {"x": rng.standard_normal((T, B, I)), "dy": rng.standard_normal((T, B, H))}
    for state in case.variant.states:
        arrays[state] = rng.standard_normal((B, H))
        arrays["d" + state.replace("0", "_n")] = rng.standard_normal((B, H))
    for role in LN_CELL_PARAMETERS[family]:
        arrays[role] = _GAINS.get(role, 0.0) + rng.uniform(-bound, bound, shapes.get(role, (G,)))
    return {name: a.astype(dtype) for name, a in arrays.items()}


def _roles(case: Case) -> tuple:
    return LN_CELL_PARAMETERS[LN_CELLS[case.variant.cell]]


def numpy_pass(
    module: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """One pass through ``fusedrnn.functional`` or ``fusedrnn.reference`` (same signatures)."""
    training = pass_name in TRAINING_PASSES
    backward = pass_name == "forward+backward"
    if case.variant.cell == "layer_norm":
        x, weight, bias = inputs["x"], inputs["weight"], inputs["bias"]

        def run_layer_norm() -> Outputs:
            y, mean, rstd = module.layer_norm_forward(x, weight, bias, training=training)
            if not backward:
                return {"y": y}
            dx, grads = module.layer_norm_backward(x, weight, mean, rstd, inputs["dy"])
            return {"y": y, "dx": dx, "dweight": grads["weight"], "dbias": grads["bias"]}

        return run_layer_norm

    lstm = case.variant.cell == "ln_lstm"
    weights = {role: inputs[role] for role in _roles(case)}
    states = [inputs[name] for name in case.variant.states]
    finals = case.variant.finals
    out_grads = [inputs["dy"], *(inputs["d" + name] for name in finals)]

    def run_cell() -> Outputs:
        forward = module.ln_lstm_forward if lstm else module.ln_gru_forward
        y, *final, workspace = forward(inputs["x"], *states, weights, training=training)
        outputs = {"y": y, **dict(zip(finals, final))}
        if backward:
            cell_backward = module.ln_lstm_backward if lstm else module.ln_gru_backward
            dx, *dstates, grads = cell_backward(
                inputs["x"], *states, weights, y, workspace, *out_grads
            )
            outputs["dx"] = dx
            outputs.update({"d" + n: d for n, d in zip(case.variant.states, dstates)})
            outputs.update({"d" + role: grads[role] for role in _roles(case)})
        return outputs

    return run_cell


def torch_pass(
    torch: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """The same pass in PyTorch: ``torch.nn.LayerNorm``, or the per-step layer-normalised cell
    module of `torch_ln_cell`; the weights copied in outside the timing, the inputs converted
    with ``torch.from_numpy`` and the results with ``.numpy()`` inside it."""
    training = pass_name in TRAINING_PASSES
    backward = pass_name == "forward+backward"
    dtype = torch.from_numpy(inputs["x"]).dtype
    if case.variant.cell == "layer_norm":
        module = torch.nn.LayerNorm(case.H).to(dtype)
        roles = ("weight", "bias")
    else:
        module = torch_ln_cell(torch, LN_CELLS[case.variant.cell], case.I, case.H).to(dtype)
        roles = _roles(case)
    module.load_state_dict({role: torch.from_numpy(inputs[role]) for role in roles})
    params = dict(module.named_parameters())
    states = case.variant.states if case.variant.cell != "layer_norm" else ()
    finals = case.variant.finals if states else ()

    def run() -> Outputs:
        x = torch.from_numpy(inputs["x"])
        state_tensors = [torch.from_numpy(inputs[n]) for n in states]
        if backward:
            for tensor in (x, *state_tensors):
                tensor.requires_grad_(True)
            for p in params.values():
                p.grad = None
        context = contextlib.nullcontext() if training else torch.inference_mode()
        with context:
            results = module(x, *state_tensors) if states else (module(x),)
        outputs = {"y": results[0].detach().numpy()}
        outputs.update({n: r.detach().numpy() for n, r in zip(finals, results[1:])})
        if backward:
            grads = [torch.from_numpy(inputs[n]) for n in ("dy", *("d" + f for f in finals))]
            torch.autograd.backward(list(results), grads)
            outputs["dx"] = x.grad.numpy()
            outputs.update({"d" + n: t.grad.numpy() for n, t in zip(states, state_tensors)})
            outputs.update({"d" + n: p.grad.numpy() for n, p in params.items()})
        return outputs

    return run


def torch_ln_cell(torch: ModuleType, family: str, I: int, H: int):
    """A layer-normalised LSTM or GRU layer as users write it in PyTorch: ``nn.Linear`` and
    ``nn.LayerNorm`` modules, the input's LN over all steps at once and a Python loop over the
    steps. Its parameters carry fusedrnn's role names (``weight_ih``, ``ln_ih_weight``, ...).

    ``module(x, h0[, c0])`` returns ``(y, h_n[, c_n])``.
    """
    nn, F = torch.nn, torch.nn.functional
    G = {"lstm": 4, "gru": 3}[family] * H

    class LayerNormCell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight_ih = nn.Parameter(torch.empty(G, I))
            self.weight_hh = nn.Parameter(torch.empty(G, H))
            for role in LN_CELL_PARAMETERS[family][2:]:
                size = H if role.startswith("ln_cell") else G
                setattr(self, role, nn.Parameter(torch.empty(size)))

        def forward(self, x, h, c=None):
            xs = F.layer_norm(x @ self.weight_ih.T, (G,), self.ln_ih_weight)
            ys = []
            for t in range(x.shape[0]):
                hs = F.layer_norm(h @ self.weight_hh.T, (G,), self.ln_hh_weight)
                if family == "lstm":
                    i, f, g, o = (xs[t] + hs + self.bias).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    cell = F.layer_norm(c, (H,), self.ln_cell_weight, self.ln_cell_bias)
                    h = torch.sigmoid(o) * torch.tanh(cell)
                else:
                    a_r, a_z, a_n = (xs[t] + self.bias_ih).chunk(3, 1)
                    b_r, b_z, b_n = (hs + self.bias_hh).chunk(3, 1)
                    r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
                    n = torch.tanh(a_n + r * b_n)
                    h = (1 - z) * n + z * h
                ys.append(h)
            y = torch.stack(ys)
            return (y, h, c) if family == "lstm" else (y, h)

    return LayerNormCell()
