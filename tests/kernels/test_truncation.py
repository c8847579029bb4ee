"""Truncated backpropagation through time, TBPTT(k1, k2): the fused kernels against the reference,
which computes it by its definition (fusedrnn/reference/truncation.py: for every chunk, re-run the
forward over its span from the states entering it, backpropagate the chunk's output gradients
through that window alone, add up)."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional, reference
from fusedrnn._spec import BIASES, DIRECTION_SUFFIXES, GATES, layer_roles, layer_suffix
from tests.helpers.cells import assert_close


def make_stack(mode, T, B, I, H, layers, seed=0, proj=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {}
    G, R = GATES[mode] * H, proj or H
    for layer in range(layers):  # unidirectional
        shapes = {
            "weight_ih": (G, I if layer == 0 else R),
            "weight_hh": (G, R),
            "bias_ih": (G,),
            "bias_hh": (G,),
            "weight_hr": (proj, H),
        }
        for role in layer_roles(True, proj):
            bound = 0.2 if role in BIASES else 0.5
            params[f"{role}{layer_suffix(layer, 0)}"] = rng.uniform(-bound, bound, shapes[role])
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((layers, B, R))
    hx = (h0, rng.standard_normal((layers, B, H))) if mode == "lstm" else h0

    def cast(a):
        return a.astype(dtype)

    hx = tuple(map(cast, hx)) if mode == "lstm" else cast(hx)
    return {k: cast(v) for k, v in params.items()}, cast(x), hx


CASES = [  # (mode, T, layers, k1, k2, lengths, proj)
    ("lstm", 7, 1, 3, 3, None, 0),
    ("lstm", 9, 2, 2, 5, None, 0),
    ("lstm", 8, 2, 1, 3, [8, 3, 6, 1], 0),
    ("lstm", 7, 2, 3, 4, [5, 7, 2], 2),
    ("gru", 9, 3, 4, 4, [9, 4, 2], 0),
    ("gru", 6, 1, 1, 6, None, 0),
    ("rnn", 10, 2, 3, 7, [10, 5, 3, 9], 0),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("mode", "T", "layers", "k1", "k2", "lengths", "proj"), CASES)
@pytest.mark.parametrize("with_dropout", [False, True])
def test_truncated_backward_fused_equals_reference(
    mode, T, layers, k1, k2, lengths, proj, with_dropout, dtype, threading_mode
):
    B = 3 if lengths is None else len(lengths)
    params, x, hx = make_stack(mode, T, B, 4, 5, layers, proj=proj, dtype=dtype)
    rng = np.random.default_rng(7)
    R = proj or 5
    masks = (
        [rng.choice([0.0, 2.0], (T, B, R)).astype(dtype) for _ in range(layers - 1)]
        if with_dropout
        else None
    )
    lengths = None if lengths is None else np.array(lengths)
    kw = {"lengths": lengths, "dropout_masks": masks, "proj_size": proj}
    results = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        y, h_n, c_n, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        dh_n = np.random.default_rng(2).standard_normal(h_n.shape).astype(dtype)
        dc_n = (
            None
            if c_n is None
            else np.random.default_rng(3).standard_normal(c_n.shape).astype(dtype)
        )
        results[name] = backend.stack_backward(
            mode,
            x,
            hx,
            params,
            layers,
            y,
            saved,
            dy,
            dh_n,
            dc_n,
            truncate=k2,
            truncate_stride=k1,
            **kw,
        )
    got, want = results["fused"], results["reference"]
    for name, a, b in zip(("dx", "dh0", "dc0"), got[:3], want[:3]):
        if b is not None:
            assert_close(a, b, dtype, name)
    for key in params:
        assert_close(got[3][key], want[3][key], dtype, key)


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
def test_truncation_covering_the_sequence_is_full_bptt(backend):
    params, x, hx = make_stack("lstm", 6, 2, 3, 4, 2)
    y, _h_n, _c_n, saved = backend.stack_forward("lstm", x, hx, params, 2)
    dy = np.ones_like(y)
    full = backend.stack_backward("lstm", x, hx, params, 2, y, saved, dy)
    cut = backend.stack_backward("lstm", x, hx, params, 2, y, saved, dy, truncate=6)
    for a, b in zip(full[:3], cut[:3]):
        assert_close(b, a, np.float64)
    for key in params:
        assert_close(cut[3][key], full[3][key], np.float64, key)


def test_truncation_changes_the_gradient():
    """Cutting the graph must matter: a gradient that ignores `truncate` fails this."""
    params, x, hx = make_stack("gru", 8, 2, 3, 4, 1)
    y, _h_n, _, saved = functional.stack_forward("gru", x, hx, params, 1)
    dy = np.ones_like(y)
    full = functional.stack_backward("gru", x, hx, params, 1, y, saved, dy)
    cut = functional.stack_backward("gru", x, hx, params, 1, y, saved, dy, truncate=2)
    assert np.abs(full[0] - cut[0]).max() > 1e-6  # dx
    assert np.abs(full[1] - cut[1]).max() > 1e-6  # dh0: only the first chunk's span reaches it


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"truncate": 2, "truncate_stride": 3},
            ValueError,
            r"truncate \(k2 = 2\) must be >= truncate_stride \(k1 = 3\)",
        ),
        ({"truncate": 0}, ValueError, "must be >= 1"),
        ({"truncate": 2.5}, TypeError, "truncate must be an int"),
        ({"truncate_stride": 2}, ValueError, "truncate_stride needs truncate"),
        ({"truncate": 2, "bidirectional": True}, ValueError, "unidirectional"),
    ],
)
def test_bad_truncation_arguments(kwargs, error, pattern, backend):
    kwargs = dict(kwargs)  # parametrize shares the dict between runs
    bidirectional = kwargs.pop("bidirectional", False)
    params, x, hx = make_stack("rnn", 5, 2, 3, 4, 1)
    if bidirectional:
        rng = np.random.default_rng(1)
        params.update(
            {
                k + DIRECTION_SUFFIXES[1]: rng.standard_normal(v.shape)
                for k, v in list(params.items())
            }
        )
        hx = np.concatenate([hx, hx])
    y, _h_n, _, saved = backend.stack_forward("rnn", x, hx, params, 1, bidirectional=bidirectional)
    with pytest.raises(error, match=pattern):
        backend.stack_backward(
            "rnn", x, hx, params, 1, y, saved, bidirectional=bidirectional, **kwargs
        )


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (fusedrnn.LSTM, {"proj_size": 3}),
        (fusedrnn.GRU, {}),
        (fusedrnn.RNN, {"nonlinearity": "relu"}),
    ],
)
def test_streaming_chunks_equal_truncate_on_the_whole_sequence(cls, kwargs, backend):
    """The documented way for sequences longer than memory: forward a chunk, carrying the state,
    backward it at once (its final-state gradient only for the last chunk): TBPTT(k, k)."""
    T, B, I, k = 11, 3, 4, 4
    layer = cls(I, 6, num_layers=2, dtype=np.float64, seed=1, backend=backend, **kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    out, hx = layer(x)
    d_out = rng.standard_normal(out.shape)
    d_hx = (
        tuple(rng.standard_normal(h.shape) for h in hx)
        if isinstance(hx, tuple)
        else rng.standard_normal(hx.shape)
    )
    dx_whole, dhx_whole = layer.backward(d_out, d_hx, truncate=k)
    grads_whole = {name: g.copy() for name, g in layer.grads.items()}

    layer.zero_grad()
    state, dx_chunks, dhx_first = None, [], None
    for start in range(0, T, k):
        _out_chunk, state = layer(x[start : start + k], state)
        last = start + k >= T
        dx_chunk, dhx_chunk = layer.backward(d_out[start : start + k], d_hx if last else None)
        dx_chunks.append(dx_chunk)
        dhx_first = dhx_chunk if dhx_first is None else dhx_first
    assert_close(np.concatenate(dx_chunks), dx_whole, np.float64, "dx")

    def as_tuple(h):
        return h if isinstance(h, tuple) else (h,)

    for a, b in zip(as_tuple(dhx_first), as_tuple(dhx_whole)):
        assert_close(a, b, np.float64, "dhx")
    for name, expected in grads_whole.items():
        assert_close(layer.grads[name], expected, np.float64, name)
