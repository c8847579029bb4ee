"""The NumPy reference against finite differences, hand-rolled steps and the contract's edge cases.

Contract: docs/kernels.md. Every fused kernel is later tested against ``fusedrnn.reference``, so
this file pins the reference itself: gradients by central differences in float64, forward
semantics and workspace layout by an independent hand-written step, and the empty / None /
accumulate / dtype rules.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fusedrnn import reference

# case name -> (cell, the cell's extra keyword options)
CASES = {
    "lstm": ("lstm", {}),
    "gru_reset_after": ("gru", {"reset_after": True}),
    "gru_reset_before": ("gru", {"reset_after": False}),
    "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
SIZES = [(3, 2, 3, 4), (1, 1, 3, 4)]  # (T, B, I, H)
RTOL, ATOL = 1e-6, 1e-8  # float64 against central differences


# ---------------------------------------------------------------- helpers: one interface for all


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


def forward(case, inputs, training=True):
    """Run the case's forward; return a dict ``y, h_n, (c_n), workspace``."""
    cell, options = CASES[case]
    if cell == "lstm":
        y, h_n, c_n, workspace = reference.lstm_forward(**inputs, training=training)
        return {"y": y, "h_n": h_n, "c_n": c_n, "workspace": workspace}
    run = reference.gru_forward if cell == "gru" else reference.rnn_forward
    y, h_n, workspace = run(**inputs, **options, training=training)
    return {"y": y, "h_n": h_n, "workspace": workspace}


def backward(case, inputs, out, out_grads, grads=None):
    """Run the case's backward; return (gradients keyed by input name, the grads dict itself).

    ``out_grads`` holds ``dy``, ``dh_n`` and for LSTM ``dc_n`` (any may be None).
    """
    cell, options = CASES[case]
    args = {
        name: inputs[name] for name in ("x", "h0", "c0", "weight_ih", "weight_hh") if name in inputs
    }
    common = {"y": out["y"], "workspace": out["workspace"], **out_grads, "grads": grads}
    if cell == "lstm":
        dx, dh0, dc0, grads = reference.lstm_backward(**args, **common)
        activations = {"x": dx, "h0": dh0, "c0": dc0}
    else:
        run = reference.gru_backward if cell == "gru" else reference.rnn_backward
        dx, dh0, grads = run(**args, **common, **options)
        activations = {"x": dx, "h0": dh0}
    return {**activations, **{name: grads[name] for name in PARAMS}}, grads


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


def central_differences(f, array, eps=1e-6):
    """d f() / d array by central differences, perturbing ``array`` in place (then restoring)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        f_plus = f()
        array[index] = saved - eps
        f_minus = f()
        array[index] = saved
        grad[index] = (f_plus - f_minus) / (2 * eps)
    return grad


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_central_differences_for_every_input(case, size):
    inputs = make_inputs(case, *size)
    out = forward(case, inputs)
    weights = loss_weights(case, out)
    analytic, _ = backward(case, inputs, out, weights)

    assert set(analytic) == set(inputs)
    for name, value in inputs.items():
        numeric = central_differences(lambda: loss(forward(case, inputs), weights), value)
        np.testing.assert_allclose(analytic[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_none_output_gradients_mean_zeros(case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs)
    weights = loss_weights(case, out)
    for missing in weights:
        with_none, _ = backward(case, inputs, out, {**weights, missing: None})
        zeros = np.zeros_like(weights[missing])
        with_zeros, _ = backward(case, inputs, out, {**weights, missing: zeros})
        for name in inputs:
            np.testing.assert_array_equal(with_none[name], with_zeros[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_grads_dict_is_accumulated_into(case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs)
    weights = loss_weights(case, out)
    once, _ = backward(case, inputs, out, weights)

    grads = {name: np.zeros_like(once[name]) for name in PARAMS}
    first, returned = backward(case, inputs, out, weights, grads=grads)
    assert returned is grads
    first = {name: value.copy() for name, value in first.items()}
    second, _ = backward(case, inputs, out, weights, grads=grads)
    for name in PARAMS:
        np.testing.assert_array_equal(grads[name], 2 * once[name], err_msg=name)
    for name in set(inputs) - set(PARAMS):  # activation gradients are fresh, not accumulated
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)


# ---------------------------------------------------------------- forward, dtype, workspace


@pytest.mark.parametrize("case", CASES)
def test_inference_forward_equals_training_forward(case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    trained = forward(case, inputs, training=True)
    inferred = forward(case, inputs, training=False)
    assert inferred.pop("workspace") is None
    for name, value in inferred.items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_float32_stays_float32(case):
    inputs32 = make_inputs(case, 3, 2, 3, 4, dtype=np.float32)
    out32 = forward(case, inputs32)
    grads32, _ = backward(case, inputs32, out32, loss_weights(case, out32))
    for name, value in {**out32, **grads32}.items():
        assert value.dtype == np.float32, name

    inputs64 = make_inputs(case, 3, 2, 3, 4)
    out64 = forward(case, inputs64)
    grads64, _ = backward(case, inputs64, out64, loss_weights(case, out64))
    for name in ("y", "h_n"):
        np.testing.assert_allclose(out32[name], out64[name], rtol=1e-4, atol=1e-5)
    for name in grads64:
        np.testing.assert_allclose(grads32[name], grads64[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_workspace_length_is_workspace_size(case, dtype):
    cell, _ = CASES[case]
    T, B, H = 3, 2, 4
    workspace = forward(case, make_inputs(case, T, B, 3, H, dtype=dtype))["workspace"]
    assert workspace.shape == (reference.workspace_size(cell, T, B, H),)
    assert workspace.dtype == dtype
    blocks = {"lstm": 5, "gru": 4, "rnn": 0}[cell]
    assert reference.workspace_size(cell, T, B, H) == T * B * H * blocks


@pytest.mark.parametrize("case", ["lstm", "gru_reset_after"])
def test_backward_without_workspace_is_a_clear_error(case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs, training=False)
    with pytest.raises(ValueError, match="training=True"):
        backward(case, inputs, out, loss_weights(case, out))


@pytest.mark.parametrize("case", CASES)
def test_wrong_shape_is_a_value_error(case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    inputs["weight_hh"] = inputs["weight_hh"][:, :-1]
    with pytest.raises(ValueError, match="weight_hh"):
        forward(case, inputs)


@pytest.mark.parametrize("case", CASES)
def test_huge_preactivations_saturate_without_warnings(case):
    inputs = make_inputs(case, 3, 2, 3, 4, dtype=np.float32)
    inputs["x"] *= np.float32(1e4)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = forward(case, inputs)
        backward(case, inputs, out, loss_weights(case, out))
    assert np.all(np.isfinite(out["y"]))
    if out["workspace"].size:  # the saved gates reach their 0 / 1 (and -1 / 1) limits exactly
        gates = out["workspace"][: out["y"].size * GATES[CASES[case][0]]]
        assert np.any(gates == 0) and np.any(gates == 1)


# ---------------------------------------------------------------- empty sequences and batches


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("T, B", [(0, 2), (3, 0), (0, 0)])
def test_empty_sequence_or_batch(case, T, B):
    I, H = 3, 4
    inputs = make_inputs(case, T, B, I, H)
    out = forward(case, inputs)
    assert out["y"].shape == (T, B, H)
    assert out["workspace"].shape == (0,)
    if T == 0:
        np.testing.assert_array_equal(out["h_n"], inputs["h0"])
        if "c_n" in out:
            np.testing.assert_array_equal(out["c_n"], inputs["c0"])
    assert out["h_n"].shape == (B, H) and not np.shares_memory(out["h_n"], inputs["h0"])

    weights = loss_weights(case, out)
    start = {name: np.full_like(inputs[name], 7.0) for name in PARAMS}
    grads = {name: value.copy() for name, value in start.items()}
    given, _ = backward(case, inputs, out, weights, grads=grads)
    assert given["x"].shape == (T, B, I)
    for name in PARAMS:
        np.testing.assert_array_equal(grads[name], start[name], err_msg=name)
    if T == 0:
        np.testing.assert_array_equal(given["h0"], weights["dh_n"])
        assert not np.shares_memory(given["h0"], weights["dh_n"])
        if "c0" in given:
            np.testing.assert_array_equal(given["c0"], weights["dc_n"])

    nothing, _ = backward(case, inputs, out, {name: None for name in weights})
    for name in set(nothing) - set(PARAMS) - {"x"}:
        np.testing.assert_array_equal(nothing[name], np.zeros((B, H)), err_msg=name)


# ---------------------------------------------------------------- forward semantics, by hand


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def lstm_step(x, h, c, p):
    """One LSTM step written out gate by gate (PyTorch's order i, f, g, o)."""
    H = h.shape[1]
    w_ih, w_hh, b_ih, b_hh = (p[name] for name in PARAMS)

    def pre(k):  # pre-activation of gate block k
        rows = slice(k * H, (k + 1) * H)
        return x @ w_ih[rows].T + b_ih[rows] + h @ w_hh[rows].T + b_hh[rows]

    i, f, g, o = sigmoid(pre(0)), sigmoid(pre(1)), np.tanh(pre(2)), sigmoid(pre(3))
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new, np.concatenate([i, f, g, o], axis=1), c_new


def gru_step(x, h, p, reset_after):
    """One GRU step written out gate by gate (r, z, n); returns h', gates, saved part."""
    H = h.shape[1]
    w_ih, w_hh, b_ih, b_hh = (p[name] for name in PARAMS)
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H : 2 * H], w_ih[2 * H :]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H :]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H : 2 * H], b_ih[2 * H :]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H : 2 * H], b_hh[2 * H :]
    r = sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    if reset_after:
        saved = h @ W_hn.T + b_hn
        n = np.tanh(x @ W_in.T + b_in + r * saved)
    else:
        saved = r * h
        n = np.tanh(x @ W_in.T + b_in + saved @ W_hn.T + b_hn)
    return (1 - z) * n + z * h, np.concatenate([r, z, n], axis=1), saved


def rnn_step(x, h, p, nonlinearity):
    pre = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    return np.tanh(pre) if nonlinearity == "tanh" else np.where(pre > 0, pre, 0.0)


@pytest.mark.parametrize("case", CASES)
def test_forward_and_workspace_layout_match_hand_written_steps(case):
    cell, options = CASES[case]
    T, B, I, H = 2, 2, 3, 4
    inputs = make_inputs(case, T, B, I, H)
    out = forward(case, inputs)

    h, c = inputs["h0"], inputs.get("c0")
    ys, gates, saved = [], [], []
    for t in range(T):
        if cell == "lstm":
            h, c, g, s = lstm_step(inputs["x"][t], h, c, inputs)
        elif cell == "gru":
            h, g, s = gru_step(inputs["x"][t], h, inputs, options["reset_after"])
        else:
            h, g, s = rnn_step(inputs["x"][t], h, inputs, options["nonlinearity"]), None, None
        ys.append(h)
        gates.append(g)
        saved.append(s)

    np.testing.assert_allclose(out["y"], np.stack(ys), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["h_n"], h, rtol=1e-12, atol=1e-14)
    if cell == "lstm":
        np.testing.assert_allclose(out["c_n"], c, rtol=1e-12, atol=1e-14)
    if cell != "rnn":  # flat workspace = gates (T, B, G*H) then the saved (T, B, H), C order
        expected = np.concatenate([np.stack(gates).ravel(), np.stack(saved).ravel()])
        np.testing.assert_allclose(out["workspace"], expected, rtol=1e-12, atol=1e-14)


def test_gru_reset_after_and_reset_before_differ_only_through_w_hn_and_b_hn():
    inputs = make_inputs("gru_reset_after", 1, 2, 3, 4)
    after = forward("gru_reset_after", inputs)["y"]
    before = forward("gru_reset_before", inputs)["y"]
    assert np.max(np.abs(after - before)) > 1e-3

    H = 4  # with W_hn = 0 and b_hn = 0 both variants compute n = tanh(W_in x + b_in)
    inputs["weight_hh"][2 * H :] = 0
    inputs["bias_hh"][2 * H :] = 0
    np.testing.assert_allclose(
        forward("gru_reset_after", inputs)["y"],
        forward("gru_reset_before", inputs)["y"],
        rtol=1e-15,
        atol=1e-15,
    )


def test_rnn_relu_and_tanh_differ():
    inputs = make_inputs("rnn_tanh", 2, 2, 3, 4)
    relu = forward("rnn_relu", inputs)["y"]
    assert np.all(relu >= 0) and np.any(relu == 0)
    assert np.max(np.abs(forward("rnn_tanh", inputs)["y"] - relu)) > 1e-3


def test_outputs_are_fresh_arrays():
    inputs = make_inputs("lstm", 3, 2, 3, 4)
    snapshot = {name: value.copy() for name, value in inputs.items()}
    out = forward("lstm", inputs)
    weights = loss_weights("lstm", out)
    grads, _ = backward("lstm", inputs, out, weights)
    for produced in (*out.values(), *grads.values()):
        for given in (*inputs.values(), *weights.values()):
            assert not np.shares_memory(produced, given)
    assert not np.shares_memory(out["h_n"], out["y"])
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, snapshot[name], err_msg=name)
