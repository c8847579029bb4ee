"""GRU, one layer, one direction, a whole sequence: the plain NumPy reference.

Per step, with ``x_r, x_z, x_n = linear(x_t, W_ih, b_ih)`` and the recurrent weights split into
``W_hrz`` (rows of r and z) and ``W_hn`` (rows of n):
``r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)`` with ``h_r, h_z = linear(h, W_hrz, b_hrz)``;
``n = tanh(x_n + r * linear(h, W_hn, b_hn))`` (reset_after, PyTorch / cuDNN) or
``n = tanh(x_n + linear(r * h, W_hn, b_hn))`` (reset_before, Cho et al. 2014);
``h' = (1 - z) * n + z * h``.
Workspace (docs/kernels.md): ``gates (T, B, 3H)`` = r, z, n after their nonlinearity, then
``(T, B, H)``: ``hn = linear(h, W_hn, b_hn)`` (reset_after) or ``rh = r * h`` (reset_before).

With ONNX's options (``options``, a `fusedrnn._cell_options.CellOptions`; docs/onnx.md), ``r``,
``z`` and ``n`` are the options' activations f, f and g of their clipped pre-activations, and the
workspace holds those pre-activations (``x_r + h_r``, ``x_z + h_z``, the argument of n) in place
of the activated gates.

With zoneout or recurrent dropout (``noise``, a `fusedrnn._recurrent_noise.RecurrentNoise`;
docs/layers.md; recurrent dropout with reset_after only), the recurrent products read
``h * scale`` (the dropout's mask, or h; ``z * h`` reads h) and ``h' = zone_h(h, h')``.

Variable lengths and the reverse direction follow the layer-stack contract (docs/kernels.md):
item b runs only its own steps ``0 .. lengths[b]-1`` (backwards from ``lengths[b]-1`` when
``reverse``). The workspace keeps the layout above, indexed by time: position ``t`` holds the step
that read ``x[t]``, and padded positions ``t >= lengths[b]`` hold zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .._recurrent_noise import NoiseMask
from ._common import (
    accumulate_linear,
    advance,
    check_shapes,
    dsigmoid,
    dtanh,
    frozen_names,
    grad_or_zeros,
    grads_or_zeros,
    in_step_order,
    keep_wanted,
    lengths_or_full,
    linear,
    new_workspace,
    only_valid,
    previous_states,
    sigmoid,
    split_workspace,
    valid_steps,
)

if TYPE_CHECKING:
    from .._cell_options import CellOptions
    from .._recurrent_noise import RecurrentNoise


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray,
    bias_hh: np.ndarray,
    reset_after: bool = True,
    training: bool = True,
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
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
    lengths : (B,) ints in 1..T, optional
        Item b has ``lengths[b]`` steps; later steps leave its state unchanged and output zeros.
        ``None``: every item has all T steps.
    reverse : bool
        Run each item from its own last step ``lengths[b] - 1`` back to 0 (the reverse half of a
        bidirectional layer). ``y`` stays indexed by time.
    options : CellOptions, optional
        ONNX's activations and clip (module docstring). ``None``: PyTorch's cell.
    noise : RecurrentNoise, optional
        Zoneout and recurrent dropout (module docstring).

    Returns
    -------
    y : (T, B, H) array
        ``y[t]`` is the hidden state after the step that read ``x[t]``; zero where
        ``t >= lengths[b]``.
    h_n : (B, H) array
        The state after each item's own last step (a copy of ``h0`` when T = 0).
    workspace : (workspace_size("gru", T, B, H),) array or None
        ``gates (T, B, 3H)`` then ``hn`` or ``rh`` ``(T, B, H)``, flat, indexed by time as ``y``
        is, zero at padded positions; ``None`` when not training.
    """
    T, B, _, H = check_shapes(
        "gru", x, h0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh
    )
    lengths = lengths_or_full(lengths, T, B)
    valid = valid_steps(lengths, T)  # (T, B, 1); in step order too, as the own steps are a prefix
    gates_all = np.zeros((T, B, 3 * H), dtype=x.dtype)  # all three in step order
    hn_or_rh = np.zeros((T, B, H), dtype=x.dtype)
    y = np.zeros((T, B, H), dtype=x.dtype)
    W_hrz, b_hrz = weight_hh[: 2 * H], bias_hh[: 2 * H]
    W_hn, b_hn = weight_hh[2 * H :], bias_hh[2 * H :]

    # (T, B, 3H): the input part of every step at once
    x_proj = linear(in_step_order(x, lengths, reverse), weight_ih, bias_ih)
    f_gate, g_gate = (sigmoid, np.tanh) if options is None else (g.value for g in options.gates())
    scale = None if noise is None else noise.dropout_scale(B, H, x.dtype)
    h = h0
    for t in range(T):
        x_r, x_z, x_n = np.split(x_proj[t], 3, axis=1)
        h_in = h if scale is None else h * scale  # what the recurrent products read
        h_r, h_z = np.split(linear(h_in, W_hrz, b_hrz), 2, axis=1)
        pre_r, pre_z = x_r + h_r, x_z + h_z
        r, z = f_gate(pre_r), f_gate(pre_z)
        if reset_after:
            hn = linear(h_in, W_hn, b_hn)
            pre_n = x_n + r * hn
            hn_or_rh[t] = only_valid(valid[t], hn)
        else:
            rh = r * h
            pre_n = x_n + linear(rh, W_hn, b_hn)
            hn_or_rh[t] = only_valid(valid[t], rh)
        n = g_gate(pre_n)
        h_new = (1 - z) * n + z * h
        if noise is not None:  # zoneout: each unit keeps its previous value where zoned
            h_new = noise.zone(NoiseMask.ZONEOUT_H, t, h, h_new)
        # items past their own last step keep their state and save / output zeros
        h = advance(valid[t], h_new, h)
        saved = [r, z, n] if options is None else [pre_r, pre_z, pre_n]
        gates_all[t] = only_valid(valid[t], np.concatenate(saved, axis=1))
        y[t] = only_valid(valid[t], h_new)

    workspace = new_workspace("gru", T, B, H, x.dtype)
    saved_gates, saved_hn_or_rh = split_workspace(workspace, "gru", T, B, H, x.dtype)
    saved_gates[...] = in_step_order(gates_all, lengths, reverse)  # back to time order
    saved_hn_or_rh[...] = in_step_order(hn_or_rh, lengths, reverse)
    y = in_step_order(y, lengths, reverse)
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
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
    input_grad: bool = True,
    frozen=(),
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
        Gradient of the loss with respect to ``y``; ``None`` means zeros. Entries at padded
        positions ``t >= lengths[b]`` are ignored.
    dh_n : (B, H) array, optional
        Gradient with respect to ``h_n``; ``None`` means zeros. Enters at each item's own last
        step.
    reset_after : bool
        As given to the forward.
    grads : dict, optional
        ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` (3H,), ``bias_hh`` (3H,):
        accumulated into with ``+=``. ``None`` makes a fresh zeroed dict.
    lengths, reverse, options, noise
        As given to the forward.
    input_grad, frozen
        As in ``lstm_backward``: ``input_grad=False`` drops dx, ``frozen`` names parameters
        whose gradients are dropped.

    Returns
    -------
    dx : (T, B, I) array, or None (``input_grad=False``)
        Zero at padded positions.
    dh0 : (B, H) array
    grads : dict
        The accumulated (or fresh) parameter gradients.
    """
    T, B, _, H = check_shapes(
        "gru", x, h0, weight_ih=weight_ih, weight_hh=weight_hh, y=y, dy=dy, dh_n=dh_n
    )
    lengths = lengths_or_full(lengths, T, B)
    frozen = frozen_names(frozen)
    valid = valid_steps(lengths, T)
    saved_gates, saved_hn_or_rh = split_workspace(workspace, "gru", T, B, H, x.dtype)
    # everything below in step order (the order the forward ran its steps)
    gates = in_step_order(saved_gates, lengths, reverse)
    saved = in_step_order(saved_hn_or_rh, lengths, reverse)
    # padded steps are no input: whatever x holds there (np.empty garbage, NaN) must not
    # reach the weight gradients through 0 * NaN
    x = only_valid(valid, in_step_order(x, lengths, reverse))
    dy = only_valid(valid, in_step_order(grad_or_zeros(dy, (T, B, H), x.dtype), lengths, reverse))
    dh = grad_or_zeros(dh_n, (B, H), x.dtype)
    h_prev = previous_states(h0, in_step_order(y, lengths, reverse))
    W_hrz, W_hn = weight_hh[: 2 * H], weight_hh[2 * H :]
    scale = None if noise is None else noise.dropout_scale(B, H, x.dtype)

    d_x_proj = np.zeros((T, B, 3 * H), dtype=x.dtype)  # gradient of x_r, x_z, x_n
    d_h_proj = np.zeros((T, B, 3 * H), dtype=x.dtype)  # of h_r, h_z and W_hn's output
    for t in reversed(range(T)):
        (r, z, n), (slope_r, slope_z, slope_n) = _gates_and_slopes(gates[t], options)
        # forward: y[t] = h_new  (h_new also feeds step t+1, whose gradient is already in dh)
        dh_new, dh_keep = dh + dy[t], 0
        if noise is not None:  # forward: h_new = zone_h(h, h_new)
            dh_new, dh_keep = noise.zone_gradient(NoiseMask.ZONEOUT_H, t, dh_new)
        # forward: h_new = (1 - z) * n + z * h
        dn = dh_new * (1 - z)
        dz = dh_new * (h_prev[t] - n)
        dh_prev = dh_new * z
        # forward: n = np.tanh(x_n + ...), in both variants
        d_x_n = dn * slope_n
        if reset_after:
            # forward: n = np.tanh(x_n + r * hn)
            dr = d_x_n * saved[t]
            d_hn = d_x_n * r
            # forward: hn = linear(h_in, W_hn, b_hn), h_in = h * scale
            dh_prev = dh_prev + _times(d_hn @ W_hn, scale)
        else:
            # forward: n = np.tanh(x_n + linear(rh, W_hn, b_hn))
            d_hn = d_x_n
            d_rh = d_hn @ W_hn
            # forward: rh = r * h
            dr = d_rh * h_prev[t]
            dh_prev = dh_prev + d_rh * r
        # forward: r = sigmoid(x_r + h_r); z = sigmoid(x_z + h_z)
        d_rz = np.concatenate([dr * slope_r, dz * slope_z], axis=1)
        d_x_proj[t] = only_valid(valid[t], np.concatenate([d_rz, d_x_n], axis=1))
        d_h_proj[t] = only_valid(valid[t], np.concatenate([d_rz, d_hn], axis=1))
        # forward: h_r, h_z = np.split(linear(h_in, W_hrz, b_hrz), 2, axis=1), h_in = h * scale
        dh_prev = dh_prev + _times(d_rz @ W_hrz, scale) + dh_keep
        # forward: h = advance(valid[t], h_new, h)
        dh = advance(valid[t], dh_prev, dh)

    given = grads
    grads = grads_or_zeros(None if frozen else grads, weight_ih, weight_hh)
    h_in = h_prev if scale is None else h_prev * scale
    # forward: h_r, h_z = np.split(linear(h_in, W_hrz, b_hrz), 2, axis=1), for all t
    accumulate_linear(
        grads["weight_hh"][: 2 * H], grads["bias_hh"][: 2 * H], h_in, d_h_proj[..., : 2 * H]
    )
    # forward: hn = linear(h_in, W_hn, b_hn)  or  n = np.tanh(x_n + linear(rh, W_hn, b_hn))
    hn_input = h_in if reset_after else saved
    accumulate_linear(
        grads["weight_hh"][2 * H :], grads["bias_hh"][2 * H :], hn_input, d_h_proj[..., 2 * H :]
    )
    # forward: x_proj = linear(x, weight_ih, bias_ih)
    accumulate_linear(grads["weight_ih"], grads["bias_ih"], x, d_x_proj)
    # zero at padded steps (the contract), also when weight_ih holds NaN / Inf
    dx = in_step_order(only_valid(valid, d_x_proj @ weight_ih), lengths, reverse)
    return (dx if input_grad else None), dh, keep_wanted(grads, given, frozen)


def _times(a: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """``a * scale`` (the recurrent dropout's mask), or ``a`` without one."""
    return a if scale is None else a * scale


def _gates_and_slopes(saved: np.ndarray, options: CellOptions | None) -> tuple:
    """One step's gates ``(r, z, n)`` and their slopes in their pre-activations, from what the
    forward saved: the activated gates (PyTorch's cell) or their pre-activations (options)."""
    if options is None:
        r, z, n = np.split(saved, 3, axis=1)
        return (r, z, n), (dsigmoid(r), dsigmoid(z), dtanh(n))
    f_gate, g_gate = options.gates()
    pre = np.split(saved, 3, axis=1)
    gates = (f_gate, f_gate, g_gate)
    return tuple(g.value(p) for g, p in zip(gates, pre)), tuple(
        g.slope(p) for g, p in zip(gates, pre)
    )
