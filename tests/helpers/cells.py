"""Helpers shared by the tests of the cells: the cases, their inputs, and one interface that runs
forward and backward on either backend (``fusedrnn.reference`` or ``fusedrnn.functional``)."""

from __future__ import annotations

import numpy as np

from fusedrnn import functional, reference
from fusedrnn._spec import CELL_PARAMETERS, GATES

BACKENDS = {"reference": reference, "fused": functional}

# case name -> (cell, the cell's extra keyword options)
CASES = {
    "lstm": ("lstm", {}),
    "gru_reset_after": ("gru", {"reset_after": True}),
    "gru_reset_before": ("gru", {"reset_after": False}),
    "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
}
PARAMS = CELL_PARAMETERS


# ---------------------------------------------------------------- helpers: one interface for all


def large_weights_sizes(case, dtype, large):
    """``(I, H)`` of a single step with one weight matrix of 1.5 MiB or more
    (csrc/common/step_gemm.h, kInPlaceWeightBytes: read in place up to 64 rows) and the other
    smaller: ``large="hh"``, W_hh at the smallest such hidden size with 7 inputs; ``"ih"``,
    W_ih at the smallest such input size with 600 gate rows (W_hh under 1.5 MiB)."""
    gates = GATES[CASES[case][0]]
    itemsize = np.dtype(dtype).itemsize
    if large == "hh":
        return 7, int(np.ceil(np.sqrt(1.5 * 2**20 / (gates * itemsize))))
    H = 600 // gates
    return int(np.ceil(1.5 * 2**20 / (gates * H * itemsize))), H


def make_inputs(case, T, B, I, H, dtype=np.float64, seed=0):
    """Random forward inputs by their contract names, weights small enough not to saturate."""
    cell, _ = CASES[case]
    rng = np.random.default_rng(seed)
    GH = GATES[cell] * H
    inputs = {"x": rng.standard_normal((T, B, I)), "h0": 0.5 * rng.standard_normal((B, H))}
    if cell == "lstm":
        inputs["c0"] = 0.5 * rng.standard_normal((B, H))
    inputs["weight_ih"] = rng.uniform(-0.6, 0.6, (GH, I))
    inputs["weight_hh"] = rng.uniform(-0.6, 0.6, (GH, H))
    inputs["bias_ih"] = rng.uniform(-0.3, 0.3, GH)
    inputs["bias_hh"] = rng.uniform(-0.3, 0.3, GH)
    return {name: value.astype(dtype) for name, value in inputs.items()}


def forward(case, inputs, training=True, backend=reference):
    """Run the case's forward; return a dict ``y, h_n, (c_n), workspace``."""
    cell, options = CASES[case]
    if cell == "lstm":
        y, h_n, c_n, workspace = backend.lstm_forward(**inputs, training=training)
        return {"y": y, "h_n": h_n, "c_n": c_n, "workspace": workspace}
    run = backend.gru_forward if cell == "gru" else backend.rnn_forward
    y, h_n, workspace = run(**inputs, **options, training=training)
    return {"y": y, "h_n": h_n, "workspace": workspace}


def backward(case, inputs, out, out_grads, grads=None, backend=reference, **extra):
    """Run the case's backward; return (gradients keyed by input name, the grads dict itself).

    ``out_grads`` holds ``dy``, ``dh_n`` and for LSTM ``dc_n`` (any may be None); ``extra``
    goes to the backward as it is (``input_grad``, ``frozen``: a frozen parameter has no entry).
    """
    cell, options = CASES[case]
    args = {
        name: inputs[name] for name in ("x", "h0", "c0", "weight_ih", "weight_hh") if name in inputs
    }
    common = {"y": out["y"], "workspace": out["workspace"], **out_grads, "grads": grads, **extra}
    if cell == "lstm":
        dx, dh0, dc0, grads = backend.lstm_backward(**args, **common)
        activations = {"x": dx, "h0": dh0, "c0": dc0}
    else:
        run = backend.gru_backward if cell == "gru" else backend.rnn_backward
        dx, dh0, grads = run(**args, **common, **options)
        activations = {"x": dx, "h0": dh0}
    return {**activations, **{name: grads[name] for name in PARAMS if name in grads}}, grads


def loss_weights(case, out, seed=1):
    """Random wy, wh, (wc) for the loss sum(y*wy) + sum(h_n*wh) (+ sum(c_n*wc))."""
    rng = np.random.default_rng(seed)
    weights = {
        "dy": rng.standard_normal(out["y"].shape),
        "dh_n": rng.standard_normal(out["h_n"].shape),
    }
    if "c_n" in out:
        weights["dc_n"] = rng.standard_normal(out["c_n"].shape)
    return {name: w.astype(out["y"].dtype) for name, w in weights.items()}


def loss(out, weights):
    total = np.sum(out["y"] * weights["dy"]) + np.sum(out["h_n"] * weights["dh_n"])
    if "c_n" in out:
        total += np.sum(out["c_n"] * weights["dc_n"])
    return total


def tolerances(dtype) -> tuple[float, float]:
    """(rtol, atol relative to the magnitude) of a fused result against the reference."""
    return (1e-10, 1e-10) if np.dtype(dtype) == np.float64 else (1e-4, 1e-5)


def assert_close(actual, desired, dtype, name=""):
    """Equal within the dtype's tolerance; atol scales with the largest magnitude of ``desired``."""
    rtol, atol = tolerances(dtype)
    scale = max(1.0, float(np.max(np.abs(desired)))) if np.size(desired) else 1.0
    assert actual.dtype == desired.dtype, name
    assert actual.shape == desired.shape, name
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol * scale, err_msg=name)


def assert_within_float32_error(actual, reference32, reference64, name="", own_error=None):
    """The float32 rule for sizes where rounding, not the kernel, sets the error (flash-attention's
    test rule, GUIDE.md): the error of ``actual`` against the float64 reference is at most 3x the
    float32 reference's own error, with a floor of a few float32 ulps of the magnitude.

    ``own_error``: the float32 reference's own error measured over several roundings of the
    same problem (`float32_own_error`), for problems that amplify rounding (a layer norm of a row
    with little spread, three of them stacked). There one rounding decides the error, and the
    reference's own error on the given values alone is the luck of that one rounding."""
    assert actual.dtype == reference32.dtype == np.float32, name
    assert actual.shape == reference32.shape == reference64.shape, name
    if not np.size(actual):
        return
    scale = max(1.0, float(np.max(np.abs(reference64))))
    own = float(np.max(np.abs(reference32.astype(np.float64) - reference64)))
    if own_error is not None:
        own = max(own, own_error)
    error = float(np.max(np.abs(actual.astype(np.float64) - reference64)))
    bound = 3 * own + 8 * float(np.finfo(np.float32).eps) * scale
    assert error <= bound, (
        f"{name}: float32 error {error:.3g} > {bound:.3g} (the float32 reference's own error, "
        f"the most of several roundings: {own:.3g})"
    )


def float32_own_error(run32, run64, inputs: list, draws: int = 8, seed: int = 0) -> list:
    """For each array ``run32(*inputs)`` returns (float32 inputs, a float32 computation), its
    largest error against ``run64`` (the float64 computation on the same values, as float64)
    over ``draws`` variants of the problem: every input element moved to a neighbouring float32
    number at random. Each variant is another draw of float32's rounding on this problem."""
    rng = np.random.default_rng(seed)
    errors = None
    for _ in range(draws):
        moved = [
            np.where(
                rng.random(np.shape(a)) < 0.5,
                np.nextafter(a, np.float32(np.inf)),
                np.nextafter(a, np.float32(-np.inf)),
            ).astype(np.float32)
            for a in inputs
        ]
        got = run32(*moved)
        want = run64(*(a.astype(np.float64) for a in moved))
        draw = [
            float(np.max(np.abs(g.astype(np.float64) - w), initial=0.0)) for g, w in zip(got, want)
        ]
        errors = draw if errors is None else [max(e, d) for e, d in zip(errors, draw)]
    return errors
