"""The fused layer stack (layers, directions, packed lengths, projections, dropout masks, no bias)
against the NumPy reference stack, both dtypes, with the kernels' own threading and with every
time loop forced onto a team of two."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import functional, reference
from fusedrnn._spec import BIASES, GATES, layer_roles, layer_suffix, num_directions
from tests.helpers.cells import assert_close


def make_params(mode, I, H, layers, bidirectional, bias, proj, rng, dtype):
    G, R, D = GATES[mode] * H, proj or H, num_directions(bidirectional)
    params = {}
    for layer in range(layers):
        shapes = {
            "weight_ih": (G, I if layer == 0 else D * R),
            "weight_hh": (G, R),
            "bias_ih": (G,),
            "bias_hh": (G,),
            "weight_hr": (proj, H),
        }
        for direction in range(D):
            for role in layer_roles(bias, proj):
                bound = 0.3 if role in BIASES else 0.5
                params[f"{role}{layer_suffix(layer, direction)}"] = rng.uniform(
                    -bound, bound, shapes[role]
                )
    return {k: v.astype(dtype) for k, v in params.items()}


# (mode, options, layers, bidirectional, bias, proj, lengths)
CASES = [
    ("lstm", {}, 2, True, True, 0, [7, 3, 1, 7, 5]),
    ("lstm", {}, 3, False, False, 3, None),
    ("lstm", {}, 2, True, True, 4, [2, 7, 7, 4, 1]),
    ("gru", {"reset_after": True}, 2, True, True, 0, [5, 7, 1, 2, 6]),
    ("gru", {"reset_after": False}, 2, True, False, 0, [7, 6, 5, 4, 3]),
    ("gru", {"reset_after": False}, 1, False, True, 0, None),
    ("rnn", {"nonlinearity": "relu"}, 3, True, True, 0, [1, 7, 3, 3, 7]),
    ("rnn", {"nonlinearity": "tanh"}, 2, False, True, 0, [7, 7, 7, 7, 7]),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("mode", "options", "layers", "bidirectional", "bias", "proj", "lengths"), CASES
)
def test_stack_fused_equals_reference(
    mode, options, layers, bidirectional, bias, proj, lengths, dtype, threading_mode
):
    rng = np.random.default_rng(3)
    T, B, I, H = 7, 5, 6, 9
    D = 2 if bidirectional else 1
    R = proj or H
    params = make_params(mode, I, H, layers, bidirectional, bias, proj, rng, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, R)).astype(dtype)
    hx = (h0, rng.standard_normal((layers * D, B, H)).astype(dtype)) if mode == "lstm" else h0
    masks = [
        (rng.random((T, B, D * R)) > 0.3).astype(dtype) / dtype(0.7) for _ in range(layers - 1)
    ]
    lengths = None if lengths is None else np.array(lengths)
    kw = dict(
        lengths=lengths, dropout_masks=masks, proj_size=proj, bidirectional=bidirectional, **options
    )
    outs = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        y, h_n, c_n, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
        dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
        dh_n = np.random.default_rng(6).standard_normal(h_n.shape).astype(dtype)
        dc_n = (
            None
            if c_n is None
            else np.random.default_rng(7).standard_normal(c_n.shape).astype(dtype)
        )
        dx, dh0, dc0, grads = backend.stack_backward(
            mode, x, hx, params, layers, y, saved, dy, dh_n, dc_n, **kw
        )
        outs[name] = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **grads)
    for key, want in outs["reference"].items():
        if want is not None:
            assert_close(outs["fused"][key], want, dtype, key)
    assert set(outs["fused"]) == set(outs["reference"])


def make_stack_inputs(mode, options, layers, bidirectional, bias, proj, lengths, rng):
    """(x, hx, params, kw) of a float64 case of CASES at T, B, I, H = 7, 5, 6, 9: random
    initial states, dropout masks between the layers, and the forward's keywords."""
    T, B, I, H = 7, 5, 6, 9
    D = 2 if bidirectional else 1
    R = proj or H
    params = make_params(mode, I, H, layers, bidirectional, bias, proj, rng, np.float64)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((layers * D, B, R))
    hx = (h0, rng.standard_normal((layers * D, B, H))) if mode == "lstm" else h0
    kw = dict(
        lengths=None if lengths is None else np.array(lengths),
        dropout_masks=[(rng.random((T, B, D * R)) > 0.3) / 0.7 for _ in range(layers - 1)],
        proj_size=proj,
        bidirectional=bidirectional,
        **options,
    )
    return x, hx, params, kw


INPUT_GRAD_CASES = [
    pytest.param(*case, truncate, id=f"{case[0]}-{i}-truncate{truncate}")
    for i, case in enumerate(CASES)
    for truncate in (None, 3)
    if not (truncate and case[3])  # (truncation: one direction only)
]


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
@pytest.mark.parametrize(
    ("mode", "options", "layers", "bidirectional", "bias", "proj", "lengths", "truncate"),
    INPUT_GRAD_CASES,
)
def test_stack_input_grad_false_gives_no_dx_and_the_same_other_gradients(
    mode, options, layers, bidirectional, bias, proj, lengths, truncate, backend, threading_mode
):
    """``input_grad=False`` (x is data): dx is None, and dh0, dc0 and every parameter's gradient
    have the bits of the call that computes dx (layer 0 skips dgates W_ih and nothing else), with
    lengths, dropout masks, projections and truncation."""
    rng = np.random.default_rng(11)
    x, hx, params, kw = make_stack_inputs(
        mode, options, layers, bidirectional, bias, proj, lengths, rng
    )
    y, _, _, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
    kw["truncate"] = truncate
    dy = rng.standard_normal(y.shape)
    full = backend.stack_backward(mode, x, hx, params, layers, y, saved, dy, **kw)
    skipped = backend.stack_backward(
        mode, x, hx, params, layers, y, saved, dy, input_grad=False, **kw
    )
    assert skipped[0] is None and full[0] is not None
    for name, a, b in (("dh0", skipped[1], full[1]), ("dc0", skipped[2], full[2])):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert set(skipped[3]) == set(full[3])
    for name in full[3]:
        np.testing.assert_array_equal(skipped[3][name], full[3][name], err_msg=name)


def test_inference_stack_equals_training_stack(threading_mode):
    rng = np.random.default_rng(0)
    params = make_params("lstm", 4, 6, 2, True, True, 3, rng, np.float64)
    x = rng.standard_normal((5, 3, 4))
    lengths = np.array([5, 2, 4])
    train = functional.stack_forward("lstm", x, None, params, 2, True, lengths, proj_size=3)
    infer = functional.stack_forward(
        "lstm", x, None, params, 2, True, lengths, proj_size=3, training=False
    )
    assert infer[3] is None
    for a, b in zip(train[:3], infer[:3]):
        np.testing.assert_array_equal(a, b)
