"""LSTM, one layer, one direction, a whole sequence: the plain NumPy reference.

Per step, with ``pre = linear(x_t, W_ih, b_ih) + linear(h, W_hh, b_hh)`` split into i, f, g, o:
``c' = sigmoid(f)*c + sigmoid(i)*tanh(g)``, ``h' = sigmoid(o)*tanh(c')``.
Workspace (docs/kernels.md): ``gates (T, B, 4H)`` = i, f, g, o after their nonlinearity, then
``c (T, B, H)`` = the cell state after each step.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    accumulate_linear,
    check_shapes,
    dsigmoid,
    dtanh,
    grad_or_zeros,
    grads_or_zeros,
    linear,
    new_workspace,
    previous_states,
    sigmoid,
    split_workspace,
)


def lstm_forward(
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray,
    bias_hh: np.ndarray,
    training: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Run an LSTM over a sequence.

    Parameters
    ----------
    x : (T, B, I) array
        Input sequence, time-major.
    h0, c0 : (B, H) arrays
        Initial hidden and cell state.
    weight_ih : (4H, I) array
        Input weights, gate blocks in the order i, f, g, o.
    weight_hh : (4H, H) array
        Recurrent weights, same gate order.
    bias_ih, bias_hh : (4H,) arrays
        The two biases.
    training : bool
        Whether to return the workspace that ``lstm_backward`` needs.

    Returns
    -------
    y : (T, B, H) array
        Every hidden state ``h_1 .. h_T``.
    h_n, c_n : (B, H) arrays
        The final states (copies of ``h0``, ``c0`` when T = 0).
    workspace : (workspace_size("lstm", T, B, H),) array or None
        ``gates (T, B, 4H)`` then ``c (T, B, H)``, flat; ``None`` when not training.
    """
    T, B, _, H = check_shapes(
        "lstm",
        x,
        h0,
        c0=c0,
        weight_ih=weight_ih,
        weight_hh=weight_hh,
        bias_ih=bias_ih,
        bias_hh=bias_hh,
    )
    workspace = new_workspace("lstm", T, B, H, x.dtype)
    saved_gates, saved_c = split_workspace(workspace, "lstm", T, B, H, x.dtype)
    y = np.empty((T, B, H), dtype=x.dtype)

    x_proj = linear(x, weight_ih, bias_ih)  # (T, B, 4H): the input part of every step at once
    h, c = h0, c0
    for t in range(T):
        pre_i, pre_f, pre_g, pre_o = np.split(x_proj[t] + linear(h, weight_hh, bias_hh), 4, axis=1)
        i, f, g, o = sigmoid(pre_i), sigmoid(pre_f), np.tanh(pre_g), sigmoid(pre_o)
        c = f * c + i * g
        h = o * np.tanh(c)
        saved_gates[t] = np.concatenate([i, f, g, o], axis=1)
        saved_c[t] = c
        y[t] = h

    return y, h.copy(), c.copy(), (workspace if training else None)


def lstm_backward(
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    y: np.ndarray,
    workspace: np.ndarray,
    dy: np.ndarray | None = None,
    dh_n: np.ndarray | None = None,
    dc_n: np.ndarray | None = None,
    grads: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backpropagate through ``lstm_forward``.

    Parameters
    ----------
    x, h0, c0, weight_ih, weight_hh
        As given to ``lstm_forward`` (shapes there).
    y : (T, B, H) array
        The forward's ``y``.
    workspace : (workspace_size("lstm", T, B, H),) array
        The workspace of a ``training=True`` forward (the reference's or the fused one's).
    dy : (T, B, H) array, optional
        Gradient of the loss with respect to ``y``; ``None`` means zeros.
    dh_n, dc_n : (B, H) arrays, optional
        Gradients with respect to ``h_n`` and ``c_n``; ``None`` means zeros.
    grads : dict, optional
        ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` (4H,), ``bias_hh`` (4H,):
        accumulated into with ``+=``. ``None`` makes a fresh zeroed dict.

    Returns
    -------
    dx : (T, B, I) array
    dh0, dc0 : (B, H) arrays
    grads : dict
        The accumulated (or fresh) parameter gradients.
    """
    T, B, _, H = check_shapes(
        "lstm",
        x,
        h0,
        c0=c0,
        weight_ih=weight_ih,
        weight_hh=weight_hh,
        y=y,
        dy=dy,
        dh_n=dh_n,
        dc_n=dc_n,
    )
    gates, c_all = split_workspace(workspace, "lstm", T, B, H, x.dtype)
    dy = grad_or_zeros(dy, (T, B, H), x.dtype)
    dh = grad_or_zeros(dh_n, (B, H), x.dtype)
    dc = grad_or_zeros(dc_n, (B, H), x.dtype)
    h_prev = previous_states(h0, y)
    c_prev = previous_states(c0, c_all)

    d_pre = np.empty((T, B, 4 * H), dtype=x.dtype)  # gradient of the pre-activations i, f, g, o
    for t in reversed(range(T)):
        i, f, g, o = np.split(gates[t], 4, axis=1)
        tanh_c = np.tanh(c_all[t])
        # forward: y[t] = h  (h also feeds step t+1, whose gradient is already in dh)
        dh = dh + dy[t]
        # forward: h = o * np.tanh(c)
        do = dh * tanh_c
        dc = dc + dh * o * dtanh(tanh_c)
        # forward: c = f * c + i * g
        df = dc * c_prev[t]
        di = dc * g
        dg = dc * i
        dc = dc * f
        # forward: i, f, g, o = sigmoid(pre_i), sigmoid(pre_f), np.tanh(pre_g), sigmoid(pre_o)
        d_pre[t] = np.concatenate(
            [di * dsigmoid(i), df * dsigmoid(f), dg * dtanh(g), do * dsigmoid(o)], axis=1
        )
        # forward: pre = x_proj[t] + linear(h, weight_hh, bias_hh)
        dh = d_pre[t] @ weight_hh

    grads = grads_or_zeros(grads, weight_ih, weight_hh)
    # forward: pre = x_proj[t] + linear(h, weight_hh, bias_hh), for all t
    accumulate_linear(grads["weight_hh"], grads["bias_hh"], h_prev, d_pre)
    # forward: x_proj = linear(x, weight_ih, bias_ih)
    accumulate_linear(grads["weight_ih"], grads["bias_ih"], x, d_pre)
    dx = d_pre @ weight_ih
    return dx, dh, dc, grads
