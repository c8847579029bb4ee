"""The NumPy reference against finite differences, hand-rolled steps and the contract's edge cases.

Contract: docs/kernels.md. Every fused kernel is later tested against ``fusedrnn.reference``, so
this file pins the reference itself: gradients by central differences in float64, forward
semantics and workspace layout by an independent hand-written step, and the empty / None /
accumulate / dtype rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.cells import CASES, PARAMS, backward, forward, loss, loss_weights, make_inputs
from tests.helpers.numgrad import central_differences

SIZES = [(3, 2, 3, 4), (1, 1, 3, 4)]  # (T, B, I, H)
RTOL, ATOL = 1e-6, 1e-8  # float64 against central differences


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


# ---------------------------------------------------------------- forward, dtype, workspace


# ---------------------------------------------------------------- empty sequences and batches


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
