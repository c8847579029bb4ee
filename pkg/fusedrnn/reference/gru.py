"""GRU, one layer, one direction, a whole sequence: the plain NumPy reference.

Per step, with ``x_r, x_z, x_n = linear(x_t, W_ih, b_ih)`` and the recurrent weights split into
``W_hrz`` (rows of r and z) and ``W_hn`` (rows of n):
``r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)`` with ``h_r, h_z = linear(h, W_hrz, b_hrz)``;
``n = tanh(x_n + r * linear(h, W_hn, b_hn))`` (reset_after, PyTorch / cuDNN) or
``n = tanh(x_n + linear(r * h, W_hn, b_hn))`` (reset_before, Cho et al. 2014);
``h' = (1 - z) * n + z * h``.
Workspace (docs/kernels.md): ``gates (T, B, 3H)`` = r, z, n after their nonlinearity, then
``(T, B, H)``: ``hn = linear(h, W_hn, b_hn)`` (reset_after) or ``rh = r * h`` (reset_before).
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


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray,
    bias_hh: np.ndarray,
    reset_after: bool = True,
    training: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run a GRU over a sequence.

    Parameters
    ----------
    x : (T, B, I) array
        Input sequence, time-major.
    h0 : (B, H) array
        Initial hidden state.
    weight_ih : (3H, I) array
        Input weights, gate blocks in the order r, z, n.
    weight_hh : (3H, H) array
        Recurrent weights, same gate order.
    bias_ih, bias_hh : (3H,) arrays
        The two biases.
    reset_after : bool
        True: the reset gate multiplies ``W_hn h + b_hn`` (PyTorch, cuDNN). False: it multiplies
        ``h`` before ``W_hn`` (Cho et al. 2014).
    training : bool
        Whether to return the workspace that ``gru_backward`` needs.

    Returns
    -------
    y : (T, B, H) array
        Every hidden state ``h_1 .. h_T``.
    h_n : (B, H) array
        The final state (a copy of ``h0`` when T = 0).
    workspace : (workspace_size("gru", T, B, H),) array or None
        ``gates (T, B, 3H)`` then ``hn`` or ``rh`` ``(T, B, H)``, flat; ``None`` when not
        training.
    """
    T, B, _, H = check_shapes(
        "gru", x, h0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh
    )
    workspace = new_workspace("gru", T, B, H, x.dtype)
    saved_gates, saved_hn_or_rh = split_workspace(workspace, "gru", T, B, H, x.dtype)
    y = np.empty((T, B, H), dtype=x.dtype)
    W_hrz, b_hrz = weight_hh[: 2 * H], bias_hh[: 2 * H]
    W_hn, b_hn = weight_hh[2 * H :], bias_hh[2 * H :]

    x_proj = linear(x, weight_ih, bias_ih)  # (T, B, 3H): the input part of every step at once
    h = h0
    for t in range(T):
        x_r, x_z, x_n = np.split(x_proj[t], 3, axis=1)
        h_r, h_z = np.split(linear(h, W_hrz, b_hrz), 2, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        if reset_after:
            hn = linear(h, W_hn, b_hn)
            n = np.tanh(x_n + r * hn)
            saved_hn_or_rh[t] = hn
        else:
            rh = r * h
            n = np.tanh(x_n + linear(rh, W_hn, b_hn))
            saved_hn_or_rh[t] = rh
        h = (1 - z) * n + z * h
        saved_gates[t] = np.concatenate([r, z, n], axis=1)
        y[t] = h

    return y, h.copy(), (workspace if training else None)


def gru_backward(
    x: np.ndarray,
    h0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    y: np.ndarray,
    workspace: np.ndarray,
    dy: np.ndarray | None = None,
    dh_n: np.ndarray | None = None,
    reset_after: bool = True,
    grads: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backpropagate through ``gru_forward``.

    Parameters
    ----------
    x, h0, weight_ih, weight_hh
        As given to ``gru_forward`` (shapes there).
    y : (T, B, H) array
        The forward's ``y``.
    workspace : (workspace_size("gru", T, B, H),) array
        The workspace of a ``training=True`` forward with the same ``reset_after``.
    dy : (T, B, H) array, optional
        Gradient of the loss with respect to ``y``; ``None`` means zeros.
    dh_n : (B, H) array, optional
        Gradient with respect to ``h_n``; ``None`` means zeros.
    reset_after : bool
        As given to the forward.
    grads : dict, optional
        ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` (3H,), ``bias_hh`` (3H,):
        accumulated into with ``+=``. ``None`` makes a fresh zeroed dict.

    Returns
    -------
    dx : (T, B, I) array
    dh0 : (B, H) array
    grads : dict
        The accumulated (or fresh) parameter gradients.
    """
    T, B, _, H = check_shapes(
        "gru", x, h0, weight_ih=weight_ih, weight_hh=weight_hh, y=y, dy=dy, dh_n=dh_n
    )
    gates, saved = split_workspace(workspace, "gru", T, B, H, x.dtype)
    dy = grad_or_zeros(dy, (T, B, H), x.dtype)
    dh = grad_or_zeros(dh_n, (B, H), x.dtype)
    h_prev = previous_states(h0, y)
    W_hrz, W_hn = weight_hh[: 2 * H], weight_hh[2 * H :]

    d_x_proj = np.empty((T, B, 3 * H), dtype=x.dtype)  # gradient of x_r, x_z, x_n
    d_h_proj = np.empty((T, B, 3 * H), dtype=x.dtype)  # of h_r, h_z and W_hn's output
    for t in reversed(range(T)):
        r, z, n = np.split(gates[t], 3, axis=1)
        # forward: y[t] = h  (h also feeds step t+1, whose gradient is already in dh)
        dh = dh + dy[t]
        # forward: h = (1 - z) * n + z * h
        dn = dh * (1 - z)
        dz = dh * (h_prev[t] - n)
        dh = dh * z
        # forward: n = np.tanh(x_n + ...), in both variants
        d_x_n = dn * dtanh(n)
        if reset_after:
            # forward: n = np.tanh(x_n + r * hn)
            dr = d_x_n * saved[t]
            d_hn = d_x_n * r
            # forward: hn = linear(h, W_hn, b_hn)
            dh = dh + d_hn @ W_hn
        else:
            # forward: n = np.tanh(x_n + linear(rh, W_hn, b_hn))
            d_hn = d_x_n
            d_rh = d_hn @ W_hn
            # forward: rh = r * h
            dr = d_rh * h_prev[t]
            dh = dh + d_rh * r
        # forward: r = sigmoid(x_r + h_r); z = sigmoid(x_z + h_z)
        d_rz = np.concatenate([dr * dsigmoid(r), dz * dsigmoid(z)], axis=1)
        d_x_proj[t] = np.concatenate([d_rz, d_x_n], axis=1)
        d_h_proj[t] = np.concatenate([d_rz, d_hn], axis=1)
        # forward: h_r, h_z = np.split(linear(h, W_hrz, b_hrz), 2, axis=1)
        dh = dh + d_rz @ W_hrz

    grads = grads_or_zeros(grads, weight_ih, weight_hh)
    # forward: h_r, h_z = np.split(linear(h, W_hrz, b_hrz), 2, axis=1), for all t
    accumulate_linear(
        grads["weight_hh"][: 2 * H], grads["bias_hh"][: 2 * H], h_prev, d_h_proj[..., : 2 * H]
    )
    # forward: hn = linear(h, W_hn, b_hn)  or  n = np.tanh(x_n + linear(rh, W_hn, b_hn))
    hn_input = h_prev if reset_after else saved
    accumulate_linear(
        grads["weight_hh"][2 * H :], grads["bias_hh"][2 * H :], hn_input, d_h_proj[..., 2 * H :]
    )
    # forward: x_proj = linear(x, weight_ih, bias_ih)
    accumulate_linear(grads["weight_ih"], grads["bias_ih"], x, d_x_proj)
    dx = d_x_proj @ weight_ih
    return dx, dh, grads
