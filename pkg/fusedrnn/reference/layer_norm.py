"""Layer normalisation and the layer-normalised LSTM and GRU: the NumPy twins of
``fusedrnn.functional.layer_norm_*`` / ``ln_lstm_*`` / ``ln_gru_*`` (csrc/layer_norm.h,
csrc/ln_cell.h), same signatures and the same workspace layout.

``LN(v)`` normalises each row of ``v`` over its last axis, without gain or bias:
``(v - mean) / sqrt(var + eps)`` with the biased variance. The cells (docs/layers.md):

- LSTM, gates i, f, g, o: ``pre = ln_ih_weight * LN(W_ih x_t) + ln_hh_weight * LN(W_hh h) +
  bias``; ``c_t = f*c + i*g``; ``h_t = o * tanh(ln_cell_weight * LN(c_t) + ln_cell_bias)``.
- GRU, gates r, z, n (PyTorch's form): ``a = ln_ih_weight * LN(W_ih x_t) + bias_ih``,
  ``b = ln_hh_weight * LN(W_hh h) + bias_hh``; ``r, z = sigmoid(a + b)`` (their blocks),
  ``n = tanh(a_n + r * b_n)``; ``h_t = (1-z)*n + z*h``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._checks import check_frozen
from .._spec import LN_CELL_BIASES, LN_CELL_PARAMETERS
from ._common import dsigmoid, dtanh, keep_wanted, sigmoid

# ---------------------------------------------------------------- LayerNorm over rows


def normalize(v: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(LN(v), rstd)`` over the last axis of ``v``; rstd = 1/sqrt(var + eps) has one axis
    fewer."""
    mean = v.mean(axis=-1, keepdims=True)
    var = np.square(v - mean).mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    return (v - mean) * rstd, rstd[..., 0]


def normalize_backward(dxhat: np.ndarray, xhat: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """The gradient of ``v`` from that of ``xhat = LN(v)``."""
    mean_d = dxhat.mean(axis=-1, keepdims=True)
    mean_dx = (dxhat * xhat).mean(axis=-1, keepdims=True)
    return rstd[..., None] * (dxhat - mean_d - xhat * mean_dx)


def layer_norm_forward(x, weight=None, bias=None, eps: float = 1e-5, training: bool = True):
    """``LN(x) * weight + bias`` over the rows of x (M, N); weight, bias (N,) or None.

    Returns y (M, N) and, when training, mean and rstd (M,) for backward (else None, None).
    """
    _check_rows(x, weight=weight, bias=bias)
    xhat, rstd = normalize(x, eps)
    y = xhat * weight if weight is not None else xhat
    if bias is not None:
        y = y + bias
    if not training:
        return y, None, None
    return y, x.mean(axis=-1), rstd


def layer_norm_backward(x, weight, mean, rstd, dy, grads=None, bias: bool = True):
    """Gradients of `layer_norm_forward`: dx (M, N), and with a weight, grads['weight'] +=
    sum(dy * xhat) and (``bias``) grads['bias'] += sum(dy) over the rows (a None grads makes
    fresh zeros; without a weight, grads is an empty dict)."""
    _check_rows(x, weight=weight, dy=dy)
    xhat = (x - mean[:, None]) * rstd[:, None]
    grads = _layer_norm_grads(grads, weight, bias)
    if weight is not None:
        grads["weight"] += (dy * xhat).sum(axis=0)
        if bias:
            grads["bias"] += dy.sum(axis=0)
    dxhat = dy * weight if weight is not None else dy
    return normalize_backward(dxhat, xhat, rstd), grads


def _layer_norm_grads(grads, weight, bias: bool) -> dict:
    if grads is not None and not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    grads = {} if grads is None else grads
    if weight is not None:
        for name in ("weight", "bias") if bias else ("weight",):
            if name not in grads or grads[name] is None:
                grads[name] = np.zeros_like(weight)
    return grads


def _check_rows(x, **arrays) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("x must be a 2-D numpy.ndarray (M, N)")
    for name, a in arrays.items():
        if a is None:
            continue
        if a.dtype != x.dtype:
            raise TypeError(f"{name} must have dtype {x.dtype} like x, got {a.dtype}")
        want = x.shape if name == "dy" else (x.shape[1],)
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want}, but has {a.shape}")


# ---------------------------------------------------------------- the cells' workspace

_SAVED_PARTS = {  # name: (per step of the input, width in units of G or H)
    "lstm": ("xhat_x", "rstd_x", "xhat_h", "rstd_h", "gates", "c", "chat", "rstd_c"),
    "gru": ("xhat_x", "rstd_x", "xhat_h", "rstd_h", "gates"),
}


def _part_shape(name: str, T: int, B: int, G: int, H: int) -> tuple:
    """A saved part's shape: an rstd holds one number per row, the others a row of G or H
    (by name, not by width: at H = 1 a row of c is one number too, yet not an rstd)."""
    if name.startswith("rstd"):
        return (T, B)
    return (T, B, G if name in ("xhat_x", "xhat_h", "gates") else H)


def ln_workspace_size(cell: str, T: int, B: int, H: int) -> int:
    """Length of the workspace of a training forward (csrc/ln_cell.h): T*B*(14H+3) (lstm),
    T*B*(9H+2) (gru)."""
    G = {"lstm": 4, "gru": 3}[cell] * H
    return sum(int(np.prod(_part_shape(name, T, B, G, H))) for name in _SAVED_PARTS[cell])


def _pack(cell: str, parts: dict) -> np.ndarray:
    return np.concatenate([parts[name].ravel() for name in _SAVED_PARTS[cell]])


def _unpack(cell: str, workspace: np.ndarray, T: int, B: int, H: int) -> dict:
    G = {"lstm": 4, "gru": 3}[cell] * H
    if workspace is None:
        raise ValueError(
            "workspace is None: backward needs the workspace that a training forward "
            "(training=True) returns"
        )
    if workspace.shape != (ln_workspace_size(cell, T, B, H),):
        raise ValueError(
            f"workspace must have shape ({ln_workspace_size(cell, T, B, H)},), "
            f"but has {workspace.shape}"
        )
    parts, start = {}, 0
    for name in _SAVED_PARTS[cell]:
        shape = _part_shape(name, T, B, G, H)
        size = int(np.prod(shape))
        parts[name] = workspace[start : start + size].reshape(shape)
        start += size
    return parts


def _weights(cell: str, weights: Mapping) -> dict:
    """The cell's parameters by role; an absent bias is None."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a dict of arrays by role, got {type(weights).__name__}")
    required = [role for role in LN_CELL_PARAMETERS[cell] if role not in LN_CELL_BIASES]
    missing = [role for role in required if weights.get(role) is None]
    if missing:
        raise ValueError(f"weights must have the roles {required}; missing {missing}")
    return {role: weights.get(role) for role in LN_CELL_PARAMETERS[cell]}


def _grads(grads, w: dict, frozen: frozenset) -> dict:
    """The dict a backward adds into: ``grads`` (its missing roles get zeros), or fresh zeros;
    fresh when some roles are frozen (`keep_wanted` then adds the wanted ones into ``grads``)."""
    if grads is not None and not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    grads = {} if grads is None or frozen else grads
    for role, value in w.items():
        if value is not None and grads.get(role) is None:
            grads[role] = np.zeros_like(value)
    return grads


def _check_cell(x, h0, w: dict) -> tuple:
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError("x must be a 3-D numpy.ndarray (T, B, input_size)")
    if not isinstance(h0, np.ndarray) or h0.shape != (x.shape[1], w["weight_hh"].shape[1]):
        raise ValueError(
            f"h0 must have shape (B, hidden_size) = ({x.shape[1]}, {w['weight_hh'].shape[1]})"
        )
    for role, a in w.items():
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"weights[{role!r}] must have dtype {x.dtype} like x, got {a.dtype}")
    return (*x.shape, w["weight_hh"].shape[1])


def _sequence_of_states(h0: np.ndarray, y: np.ndarray) -> np.ndarray:
    """h_{t-1} for every step t: h0, then y[:-1]."""
    return np.concatenate([h0[None], y[:-1]])


# ---------------------------------------------------------------- layer-normalised LSTM


def ln_lstm_forward(x, h0, c0, weights: Mapping, eps: float = 1e-5, training: bool = True):
    """Layer-normalised LSTM over a sequence.

    Parameters
    ----------
    x : (T, B, input_size);  h0, c0 : (B, H)
    weights : mapping of roles: weight_ih (4H, input_size), weight_hh (4H, H), ln_ih_weight,
        ln_hh_weight (4H,), ln_cell_weight (H,); optional bias (4H,), ln_cell_bias (H,)
    eps : float, added to each LN's variance

    Returns
    -------
    y : (T, B, H);  h_n, c_n : (B, H);  workspace : (T*B*(14H+3),) or None
    """
    w = _weights("lstm", weights)
    T, B, _, H = _check_cell(x, h0, w)
    parts = {}
    parts["xhat_x"], parts["rstd_x"] = normalize(x @ w["weight_ih"].T, eps)
    for name, shape in (("xhat_h", (T, B, 4 * H)), ("gates", (T, B, 4 * H))):
        parts[name] = np.zeros(shape, x.dtype)
    for name in ("c", "chat"):
        parts[name] = np.zeros((T, B, H), x.dtype)
    parts["rstd_h"], parts["rstd_c"] = np.zeros((T, B), x.dtype), np.zeros((T, B), x.dtype)
    y = np.zeros((T, B, H), x.dtype)
    h, c = h0, c0
    for t in range(T):
        parts["xhat_h"][t], parts["rstd_h"][t] = normalize(h @ w["weight_hh"].T, eps)
        pre = w["ln_ih_weight"] * parts["xhat_x"][t] + w["ln_hh_weight"] * parts["xhat_h"][t]
        if w["bias"] is not None:
            pre = pre + w["bias"]
        i, f, g, o = np.split(pre, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        parts["gates"][t] = np.concatenate([i, f, g, o], axis=1)
        c = f * c + i * g
        parts["c"][t] = c
        parts["chat"][t], parts["rstd_c"][t] = normalize(c, eps)
        h = o * np.tanh(_cell_norm_output(w, parts["chat"][t]))
        y[t] = h
    return y, h.copy(), c.copy(), (_pack("lstm", parts) if training else None)


def _cell_norm_output(w: dict, chat: np.ndarray) -> np.ndarray:
    """u = ln_cell_weight * LN(c) + ln_cell_bias."""
    u = w["ln_cell_weight"] * chat
    return u + w["ln_cell_bias"] if w["ln_cell_bias"] is not None else u


def ln_lstm_backward(
    x, h0, c0, weights, y, workspace, dy=None, dh_n=None, dc_n=None, grads=None, *,
    input_grad: bool = True, frozen=(),
):  # fmt: skip
    """Gradients of `ln_lstm_forward`: dx (T, B, input_size), dh0, dc0 (B, H), and grads (a
    dict by role, added into; None makes fresh zeros). ``input_grad=False`` (x is data): dx is
    None; ``frozen`` (roles): their gradients are not returned and a given grads keeps its
    arrays for them (both computed here and dropped; the fused kernel skips them)."""
    w = _weights("lstm", weights)
    T, B, _, H = _check_cell(x, h0, w)
    s = _unpack("lstm", workspace, T, B, H)
    frozen = check_frozen(frozen, tuple(weights))
    given, grads = grads, _grads(grads, w, frozen)
    dh = np.zeros_like(h0) if dh_n is None else dh_n.copy()
    dc = np.zeros_like(c0) if dc_n is None else dc_n.copy()
    dpre = np.zeros((T, B, 4 * H), x.dtype)
    dhproj = np.zeros_like(dpre)
    du = np.zeros((T, B, H), x.dtype)
    for t in reversed(range(T)):
        dh_total = dh + (dy[t] if dy is not None else 0)
        i, f, g, o = np.split(s["gates"][t], 4, axis=1)
        # forward: h = o * tanh(u), u = ln_cell_weight * LN(c) + ln_cell_bias
        tu = np.tanh(_cell_norm_output(w, s["chat"][t]))
        d_o = dh_total * tu * dsigmoid(o)
        du[t] = dh_total * o * dtanh(tu)
        dc_total = dc + normalize_backward(
            du[t] * w["ln_cell_weight"], s["chat"][t], s["rstd_c"][t]
        )
        # forward: c = f*c_prev + i*g
        c_prev = s["c"][t - 1] if t else c0
        d_i = dc_total * g * dsigmoid(i)
        d_f = dc_total * c_prev * dsigmoid(f)
        d_g = dc_total * i * dtanh(g)
        dc = dc_total * f
        dpre[t] = np.concatenate([d_i, d_f, d_g, d_o], axis=1)
        # forward: pre = ... + ln_hh_weight * LN(h_prev W_hh^T)
        dhproj[t] = normalize_backward(dpre[t] * w["ln_hh_weight"], s["xhat_h"][t], s["rstd_h"][t])
        dh = dhproj[t] @ w["weight_hh"]
    grads["ln_ih_weight"] += (dpre * s["xhat_x"]).sum(axis=(0, 1))
    grads["ln_hh_weight"] += (dpre * s["xhat_h"]).sum(axis=(0, 1))
    if w["bias"] is not None:
        grads["bias"] += dpre.sum(axis=(0, 1))
    grads["ln_cell_weight"] += (du * s["chat"]).sum(axis=(0, 1))
    if w["ln_cell_bias"] is not None:
        grads["ln_cell_bias"] += du.sum(axis=(0, 1))
    dx = _input_and_weight_grads(w, grads, x, h0, y, dpre, dhproj, s)
    return (dx if input_grad else None), dh, dc, keep_wanted(grads, given, frozen)


def _input_and_weight_grads(w, grads, x, h0, y, d_ax, dhproj, s) -> np.ndarray:
    """forward: xhat_x = LN(x W_ih^T), xhat_h = LN(h_prev W_hh^T): dW_ih, dW_hh and dx."""
    dxproj = normalize_backward(d_ax * w["ln_ih_weight"], s["xhat_x"], s["rstd_x"])
    grads["weight_ih"] += np.einsum("tbg,tbi->gi", dxproj, x)
    grads["weight_hh"] += np.einsum("tbg,tbh->gh", dhproj, _sequence_of_states(h0, y))
    return dxproj @ w["weight_ih"]


# ---------------------------------------------------------------- layer-normalised GRU


def ln_gru_forward(x, h0, weights: Mapping, eps: float = 1e-5, training: bool = True):
    """Layer-normalised GRU over a sequence.

    Parameters
    ----------
    x : (T, B, input_size);  h0 : (B, H)
    weights : mapping of roles: weight_ih (3H, input_size), weight_hh (3H, H), ln_ih_weight,
        ln_hh_weight (3H,); optional bias_ih, bias_hh (3H,)

    Returns
    -------
    y : (T, B, H);  h_n : (B, H);  workspace : (T*B*(9H+2),) or None
    """
    w = _weights("gru", weights)
    T, B, _, H = _check_cell(x, h0, w)
    parts = {}
    parts["xhat_x"], parts["rstd_x"] = normalize(x @ w["weight_ih"].T, eps)
    parts["xhat_h"] = np.zeros((T, B, 3 * H), x.dtype)
    parts["gates"] = np.zeros((T, B, 3 * H), x.dtype)
    parts["rstd_h"] = np.zeros((T, B), x.dtype)
    y = np.zeros((T, B, H), x.dtype)
    h = h0
    for t in range(T):
        parts["xhat_h"][t], parts["rstd_h"][t] = normalize(h @ w["weight_hh"].T, eps)
        a, b = _gru_parts(w, parts["xhat_x"][t], parts["xhat_h"][t])
        r = sigmoid(a[:, :H] + b[:, :H])
        z = sigmoid(a[:, H : 2 * H] + b[:, H : 2 * H])
        n = np.tanh(a[:, 2 * H :] + r * b[:, 2 * H :])
        parts["gates"][t] = np.concatenate([r, z, n], axis=1)
        h = (1 - z) * n + z * h
        y[t] = h
    return y, h.copy(), (_pack("gru", parts) if training else None)


def _gru_parts(w: dict, xhat_x: np.ndarray, xhat_h: np.ndarray) -> tuple:
    """a = ln_ih_weight * xhat_x + bias_ih and b = ln_hh_weight * xhat_h + bias_hh."""
    a, b = w["ln_ih_weight"] * xhat_x, w["ln_hh_weight"] * xhat_h
    if w["bias_ih"] is not None:
        a = a + w["bias_ih"]
    if w["bias_hh"] is not None:
        b = b + w["bias_hh"]
    return a, b


def ln_gru_backward(
    x, h0, weights, y, workspace, dy=None, dh_n=None, grads=None, *, input_grad: bool = True,
    frozen=(),
):  # fmt: skip
    """Gradients of `ln_gru_forward`: dx (T, B, input_size), dh0 (B, H), and grads (a dict by
    role, added into; None makes fresh zeros). ``input_grad`` and ``frozen``: as
    `ln_lstm_backward`."""
    w = _weights("gru", weights)
    T, B, _, H = _check_cell(x, h0, w)
    s = _unpack("gru", workspace, T, B, H)
    frozen = check_frozen(frozen, tuple(weights))
    given, grads = grads, _grads(grads, w, frozen)
    dh = np.zeros_like(h0) if dh_n is None else dh_n.copy()
    d_ax = np.zeros((T, B, 3 * H), x.dtype)
    d_ah = np.zeros_like(d_ax)
    dhproj = np.zeros_like(d_ax)
    for t in reversed(range(T)):
        dh_total = dh + (dy[t] if dy is not None else 0)
        r, z, n = np.split(s["gates"][t], 3, axis=1)
        _, b = _gru_parts(w, s["xhat_x"][t], s["xhat_h"][t])
        h_prev = y[t - 1] if t else h0
        # forward: h = (1-z)*n + z*h_prev, n = tanh(a_n + r * b_n), r, z = sigmoid(a + b)
        dn_pre = dh_total * (1 - z) * dtanh(n)
        dz_pre = dh_total * (h_prev - n) * dsigmoid(z)
        dr_pre = dn_pre * b[:, 2 * H :] * dsigmoid(r)
        d_ax[t] = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        d_ah[t] = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        dhproj[t] = normalize_backward(d_ah[t] * w["ln_hh_weight"], s["xhat_h"][t], s["rstd_h"][t])
        dh = dh_total * z + dhproj[t] @ w["weight_hh"]
    grads["ln_ih_weight"] += (d_ax * s["xhat_x"]).sum(axis=(0, 1))
    grads["ln_hh_weight"] += (d_ah * s["xhat_h"]).sum(axis=(0, 1))
    if w["bias_ih"] is not None:
        grads["bias_ih"] += d_ax.sum(axis=(0, 1))
    if w["bias_hh"] is not None:
        grads["bias_hh"] += d_ah.sum(axis=(0, 1))
    dx = _input_and_weight_grads(w, grads, x, h0, y, d_ax, dhproj, s)
    return (dx if input_grad else None), dh, keep_wanted(grads, given, frozen)
