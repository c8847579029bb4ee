"""Truncated backpropagation through time, TBPTT(k1, k2), against brute force: for every chunk,
re-run the forward over its span from the true states at the span's start (constants), backpropagate
the chunk's output gradients through that window alone, and sum over chunks."""

from __future__ import annotations

import numpy as np
import pytest
from cells import assert_close
from fusedrnn import functional

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def make_stack(mode, T, B, I, H, layers, seed=0, proj=0):
    rng = np.random.default_rng(seed)
    params = {}
    R = proj or H
    for layer in range(layers):
        size = I if layer == 0 else R
        params[f"weight_ih_l{layer}"] = rng.uniform(-0.5, 0.5, (GATES[mode] * H, size))
        params[f"weight_hh_l{layer}"] = rng.uniform(-0.5, 0.5, (GATES[mode] * H, R))
        params[f"bias_ih_l{layer}"] = rng.uniform(-0.2, 0.2, GATES[mode] * H)
        params[f"bias_hh_l{layer}"] = rng.uniform(-0.2, 0.2, GATES[mode] * H)
        if proj:
            params[f"weight_hr_l{layer}"] = rng.uniform(-0.5, 0.5, (proj, H))
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((layers, B, R))
    hx = (h0, rng.standard_normal((layers, B, H))) if mode == "lstm" else h0
    return params, x, hx


def layer_params(params, layer):
    return {k.replace(f"_l{layer}", "_l0"): v for k, v in params.items() if f"_l{layer}" in k}


def states_before(mode, params, x, hx, layers, lengths, begin, masks, proj):
    """Each layer's state entering step `begin` (rows that ended earlier: their last state)."""
    if begin == 0:
        return hx
    h, c = [], []
    layer_in = x[:begin]
    short = None if lengths is None else np.minimum(lengths, begin)
    for layer in range(layers):
        state = (hx[0][layer:layer + 1], hx[1][layer:layer + 1]) if mode == "lstm" \
            else hx[layer:layer + 1]
        y, h_n, c_n, _ = functional.stack_forward(mode, layer_in, state, layer_params(params, layer),
                                                  1, lengths=short, training=False, proj_size=proj)
        h.append(h_n[0])
        if mode == "lstm":
            c.append(c_n[0])
        layer_in = y * masks[layer][:begin] if masks is not None and layer < layers - 1 else y
    return (np.stack(h), np.stack(c)) if mode == "lstm" else np.stack(h)


def brute_force(mode, params, x, hx, layers, lengths, masks, dy, dh_n, dc_n, k1, k2, proj):
    T, B = x.shape[:2]
    lengths_all = np.full(B, T) if lengths is None else np.asarray(lengths)
    dx = np.zeros_like(x)
    dh0 = np.zeros_like(hx[0] if mode == "lstm" else hx)
    dc0 = np.zeros_like(hx[1]) if mode == "lstm" else None
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    for chunk_begin in range(0, T, k1):
        end = min(chunk_begin + k1, T)
        begin = max(0, chunk_begin - (k2 - k1))
        rows = np.flatnonzero(lengths_all > begin)  # rows with steps in the span
        start = states_before(mode, params, x, hx, layers, lengths, begin, masks, proj)
        hx_w = (start[0][:, rows], start[1][:, rows]) if mode == "lstm" else start[:, rows]
        len_w = np.minimum(lengths_all[rows], end) - begin
        x_w = x[begin:end, rows]
        masks_w = None if masks is None else [m[begin:end][:, rows] for m in masks]
        y_w, _, _, saved = functional.stack_forward(mode, x_w, hx_w, params, layers,
                                                    lengths=len_w, dropout_masks=masks_w,
                                                    proj_size=proj)
        dy_w = dy[begin:end, rows].copy()
        dy_w[: chunk_begin - begin] = 0  # look-back steps carry no output gradient
        last = lengths_all[rows] - 1
        ends_here = ((last >= chunk_begin) & (last < end))[None, :, None]
        dh_w = dh_n[:, rows] * ends_here
        dc_w = dc_n[:, rows] * ends_here if mode == "lstm" else None
        dx_w, dh0_w, dc0_w, grads = functional.stack_backward(
            mode, x_w, hx_w, params, layers, y_w, saved, dy_w, dh_w, dc_w,
            lengths=len_w, dropout_masks=masks_w, grads=grads, proj_size=proj)
        dx[begin:end, rows] += dx_w
        if begin == 0:
            dh0[:, rows] += dh0_w
            if mode == "lstm":
                dc0[:, rows] += dc0_w
    return dx, dh0, dc0, grads


CASES = [  # (mode, T, layers, k1, k2, lengths, proj)
    ("lstm", 7, 1, 3, 3, None, 0),
    ("lstm", 9, 2, 2, 5, None, 0),
    ("lstm", 8, 2, 1, 3, [8, 3, 6, 1], 0),
    ("lstm", 7, 2, 3, 4, [5, 7, 2], 2),
    ("gru", 9, 3, 4, 4, [9, 4, 2], 0),
    ("gru", 6, 1, 1, 6, None, 0),
    ("rnn", 10, 2, 3, 7, [10, 5, 3, 9], 0),
]


@pytest.mark.parametrize("mode, T, layers, k1, k2, lengths, proj", CASES)
@pytest.mark.parametrize("with_dropout", [False, True])
def test_truncated_backward_equals_brute_force(mode, T, layers, k1, k2, lengths, proj, with_dropout):
    B = 3 if lengths is None else len(lengths)
    params, x, hx = make_stack(mode, T, B, 4, 5, layers, proj=proj)
    rng = np.random.default_rng(7)
    R = proj or 5
    masks = [rng.choice([0.0, 2.0], (T, B, R)) for _ in range(layers - 1)] if with_dropout else None
    lengths = None if lengths is None else np.array(lengths)
    y, h_n, c_n, saved = functional.stack_forward(mode, x, hx, params, layers, lengths=lengths,
                                                  dropout_masks=masks, proj_size=proj)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(h_n.shape)
    dc_n = rng.standard_normal(c_n.shape) if mode == "lstm" else None
    got = functional.stack_backward(mode, x, hx, params, layers, y, saved, dy, dh_n, dc_n,
                                    lengths=lengths, dropout_masks=masks, truncate=k2,
                                    truncate_stride=k1, proj_size=proj)
    want = brute_force(mode, params, x, hx, layers, lengths, masks, dy, dh_n, dc_n, k1, k2, proj)
    for name, a, b in zip(("dx", "dh0", "dc0"), got[:3], want[:3]):
        if b is not None:
            assert_close(a, b, np.float64, name)
    for key in params:
        assert_close(got[3][key], want[3][key], np.float64, key)


def test_truncation_covering_the_sequence_is_full_bptt():
    params, x, hx = make_stack("lstm", 6, 2, 3, 4, 2)
    y, h_n, c_n, saved = functional.stack_forward("lstm", x, hx, params, 2)
    dy = np.ones_like(y)
    full = functional.stack_backward("lstm", x, hx, params, 2, y, saved, dy)
    cut = functional.stack_backward("lstm", x, hx, params, 2, y, saved, dy, truncate=6)
    for a, b in zip(full[:3], cut[:3]):
        assert_close(b, a, np.float64)
    for key in params:
        assert_close(cut[3][key], full[3][key], np.float64, key)


def test_truncation_changes_the_gradient():
    """Cutting the graph must matter: a gradient that ignores `truncate` fails this."""
    params, x, hx = make_stack("gru", 8, 2, 3, 4, 1)
    y, h_n, _, saved = functional.stack_forward("gru", x, hx, params, 1)
    dy = np.ones_like(y)
    full = functional.stack_backward("gru", x, hx, params, 1, y, saved, dy)
    cut = functional.stack_backward("gru", x, hx, params, 1, y, saved, dy, truncate=2)
    assert np.abs(full[0] - cut[0]).max() > 1e-6  # dx
    assert np.abs(full[1] - cut[1]).max() > 1e-6  # dh0: only the first chunk's span reaches it


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"truncate": 2, "truncate_stride": 3}, ValueError, r"truncate \(k2 = 2\) must be >= truncate_stride \(k1 = 3\)"),
        ({"truncate": 0}, ValueError, "must be >= 1"),
        ({"truncate": 2.5}, TypeError, "truncate must be an int"),
        ({"truncate_stride": 2}, ValueError, "truncate_stride needs truncate"),
        ({"truncate": 2, "bidirectional": True}, ValueError, "unidirectional"),
    ],
)
def test_bad_truncation_arguments(kwargs, error, pattern):
    bidirectional = kwargs.pop("bidirectional", False)
    params, x, hx = make_stack("rnn", 5, 2, 3, 4, 1)
    if bidirectional:
        rng = np.random.default_rng(1)
        params.update({k + "_reverse": rng.standard_normal(v.shape) for k, v in list(params.items())})
        hx = np.concatenate([hx, hx])
    y, h_n, _, saved = functional.stack_forward("rnn", x, hx, params, 1, bidirectional=bidirectional)
    with pytest.raises(error, match=pattern):
        functional.stack_backward("rnn", x, hx, params, 1, y, saved, bidirectional=bidirectional,
                                  **kwargs)
