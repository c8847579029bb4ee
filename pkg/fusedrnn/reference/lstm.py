"""LSTM, one layer, one direction, a whole sequence: the plain NumPy reference.

Per step, with ``pre = linear(x_t, W_ih, b_ih) + linear(h, W_hh, b_hh)`` split into i, f, g, o:
``c' = sigmoid(f)*c + sigmoid(i)*tanh(g)``, ``h' = sigmoid(o)*tanh(c')``, or with a projection
(``weight_hr``, PyTorch's ``proj_size``) ``h' = W_hr (sigmoid(o)*tanh(c'))``.
Workspace (docs/kernels.md): ``gates (T, B, 4H)`` = i, f, g, o after their nonlinearity, then
``c (T, B, H)`` = the cell state after each step.

With ONNX's options (``options``, a `fusedrnn._cell_options.CellOptions`; docs/onnx.md), per
step, gates f, g and h the options' activations of ``clip(pre)``:
``i = f(pre_i + p_i*c)``, ``f = f(pre_f + p_f*c)`` (or ``1 - i`` with ``input_forget``),
``c' = f*c + i*g(pre_g)``, ``o = f(pre_o + p_o*c')``, ``h' = o*h(c')``, the peephole terms only
with ``weight_peephole`` ``(3H,)`` = p_i, p_f, p_o. The workspace then holds the gates'
pre-activations (peepholes added, not clipped) in place of their activated values.

With zoneout or recurrent dropout (``noise``, a `fusedrnn._recurrent_noise.RecurrentNoise`;
docs/layers.md), the recurrent product reads ``h * scale`` (the dropout's mask, or h), and after
the step above ``c' = zone_c(c, c')``, ``h' = zone_h(h, h')``: h' is computed from the candidate
c' before zoneout, as in Krueger et al. (2016). The workspace's c is the state after zoneout;
backward recomputes the candidate ``f*c + i*g`` from the gates.

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


def lstm_forward(
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray,
    bias_hh: np.ndarray,
    training: bool = True,
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    weight_hr: np.ndarray | None = None,
    weight_peephole: np.ndarray | None = None,
    options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Run an LSTM over a sequence.

    ``P`` below is the size of ``h``: ``P = H`` without a projection.

    Parameters
    ----------
    x : (T, B, I) array
        Input sequence, time-major.
    h0 : (B, P) array
        Initial hidden state.
    c0 : (B, H) array
        Initial cell state.
    weight_ih : (4H, I) array
        Input weights, gate blocks in the order i, f, g, o.
    weight_hh : (4H, P) array
        Recurrent weights, same gate order.
    bias_ih, bias_hh : (4H,) arrays
        The two biases.
    training : bool
        Whether to return the workspace that ``lstm_backward`` needs.
    lengths : (B,) ints in 1..T, optional
        Item b has ``lengths[b]`` steps; later steps leave its state unchanged and output zeros.
        ``None``: every item has all T steps.
    reverse : bool
        Run each item from its own last step ``lengths[b] - 1`` back to 0 (the reverse half of a
        bidirectional layer). ``y`` stays indexed by time.
    weight_hr : (P, H) array, optional
        Projection: ``h' = W_hr (o * tanh(c'))``. ``None``: no projection.
    weight_peephole : (3H,) array, optional
        Peepholes p_i, p_f, p_o (needs ``options``). ``None``: none.
    options : CellOptions, optional
        ONNX's activations, clip and input_forget (module docstring). ``None``: PyTorch's cell.
    noise : RecurrentNoise, optional
        Zoneout and recurrent dropout (module docstring); needs ``weight_hr`` None.

    Returns
    -------
    y : (T, B, P) array
        ``y[t]`` is the hidden state after the step that read ``x[t]``; zero where
        ``t >= lengths[b]``.
    h_n : (B, P) array
        The state after each item's own last step (a copy of ``h0`` when T = 0).
    c_n : (B, H) array
        Likewise for the cell state.
    workspace : (workspace_size("lstm", T, B, H),) array or None
        ``gates (T, B, 4H)`` then ``c (T, B, H)``, flat, indexed by time as ``y`` is, zero at
        padded positions; ``None`` when not training. Its size does not depend on ``P``.
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
        weight_hr=weight_hr,
    )
    lengths = lengths_or_full(lengths, T, B)
    valid = valid_steps(lengths, T)  # (T, B, 1); in step order too, as the own steps are a prefix
    P = h0.shape[1]
    gates_all = np.zeros((T, B, 4 * H), dtype=x.dtype)  # all three in step order
    c_all = np.zeros((T, B, H), dtype=x.dtype)
    y = np.zeros((T, B, P), dtype=x.dtype)

    # the input part of every step at once
    x_proj = linear(in_step_order(x, lengths, reverse), weight_ih, bias_ih)
    scale = None if noise is None else noise.dropout_scale(B, H, x.dtype)
    h, c = h0, c0
    for t in range(T):
        h_in = h if scale is None else h * scale
        pre_i, pre_f, pre_g, pre_o = np.split(
            x_proj[t] + linear(h_in, weight_hh, bias_hh), 4, axis=1
        )
        if options is None:
            i, f, g, o = sigmoid(pre_i), sigmoid(pre_f), np.tanh(pre_g), sigmoid(pre_o)
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            saved = np.concatenate([i, f, g, o], axis=1)
        else:
            f_gate, g_gate, h_act = options.gates()
            if weight_peephole is not None:  # i and f see c, o sees c_new
                p_i, p_f, p_o = np.split(weight_peephole, 3)
                pre_i, pre_f = pre_i + p_i * c, pre_f + p_f * c
            i = f_gate.value(pre_i)
            f = 1 - i if options.input_forget else f_gate.value(pre_f)
            c_new = f * c + i * g_gate.value(pre_g)
            if weight_peephole is not None:
                pre_o = pre_o + p_o * c_new
            h_new = f_gate.value(pre_o) * h_act.act.value(c_new)  # (h is not clipped)
            saved = np.concatenate([pre_i, pre_f, pre_g, pre_o], axis=1)
        if weight_hr is not None:
            h_new = h_new @ weight_hr.T
        if noise is not None:  # zoneout: each state keeps its previous value where zoned
            c_new = noise.zone(NoiseMask.ZONEOUT_C, t, c, c_new)
            h_new = noise.zone(NoiseMask.ZONEOUT_H, t, h, h_new)
        # items past their own last step keep their state and save / output zeros
        c = advance(valid[t], c_new, c)
        h = advance(valid[t], h_new, h)
        gates_all[t] = only_valid(valid[t], saved)
        c_all[t] = only_valid(valid[t], c_new)
        y[t] = only_valid(valid[t], h_new)

    workspace = new_workspace("lstm", T, B, H, x.dtype)
    saved_gates, saved_c = split_workspace(workspace, "lstm", T, B, H, x.dtype)
    saved_gates[...] = in_step_order(gates_all, lengths, reverse)  # back to time order
    saved_c[...] = in_step_order(c_all, lengths, reverse)
    y = in_step_order(y, lengths, reverse)
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
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    weight_hr: np.ndarray | None = None,
    weight_peephole: np.ndarray | None = None,
    options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
    input_grad: bool = True,
    frozen=(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backpropagate through ``lstm_forward``.

    Parameters
    ----------
    x, h0, c0, weight_ih, weight_hh
        As given to ``lstm_forward`` (shapes there).
    y : (T, B, P) array
        The forward's ``y``.
    workspace : (workspace_size("lstm", T, B, H),) array
        The workspace of a ``training=True`` forward (the reference's or the fused one's).
    dy : (T, B, P) array, optional
        Gradient of the loss with respect to ``y``; ``None`` means zeros. Entries at padded
        positions ``t >= lengths[b]`` are ignored.
    dh_n : (B, P) array, optional
        Gradient with respect to ``h_n``; ``None`` means zeros. Enters at each item's own last
        step.
    dc_n : (B, H) array, optional
        Likewise for ``c_n``.
    grads : dict, optional
        ``weight_ih`` (4H, I), ``weight_hh`` (4H, P), ``bias_ih`` (4H,), ``bias_hh`` (4H,) and,
        with a projection, ``weight_hr`` (P, H), with peepholes ``weight_peephole`` (3H,):
        accumulated into with ``+=``. ``None`` makes a fresh zeroed dict.
    lengths, reverse, weight_hr, weight_peephole, options, noise
        As given to the forward.
    input_grad : bool
        False: the input is data, whose gradient is not wanted: ``dx`` is None. (The fused
        kernels then skip ``dgates @ weight_ih``; the reference computes it and drops it.)
    frozen : collection of str
        Names of parameters whose gradients are not wanted (PyTorch's ``requires_grad=False``):
        they are absent from the returned dict, and a given ``grads`` keeps its arrays for them
        untouched. (The fused kernels skip their GEMMs; the reference computes and drops them.)

    Returns
    -------
    dx : (T, B, I) array, or None (``input_grad=False``)
        Zero at padded positions.
    dh0 : (B, P) array
    dc0 : (B, H) array
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
        weight_hr=weight_hr,
        y=y,
        dy=dy,
        dh_n=dh_n,
        dc_n=dc_n,
    )
    lengths = lengths_or_full(lengths, T, B)
    frozen = frozen_names(frozen, weight_hr, weight_peephole)
    valid = valid_steps(lengths, T)
    P = h0.shape[1]
    saved_gates, saved_c = split_workspace(workspace, "lstm", T, B, H, x.dtype)
    # everything below in step order (the order the forward ran its steps)
    gates = in_step_order(saved_gates, lengths, reverse)
    c_all = in_step_order(saved_c, lengths, reverse)
    # padded steps are no input: whatever x holds there (np.empty garbage, NaN) must not
    # reach the weight gradients through 0 * NaN
    x = only_valid(valid, in_step_order(x, lengths, reverse))
    dy = only_valid(valid, in_step_order(grad_or_zeros(dy, (T, B, P), x.dtype), lengths, reverse))
    dh = grad_or_zeros(dh_n, (B, P), x.dtype)
    dc = grad_or_zeros(dc_n, (B, H), x.dtype)
    h_prev = previous_states(h0, in_step_order(y, lengths, reverse))
    c_prev = previous_states(c0, c_all)
    scale = None if noise is None else noise.dropout_scale(B, H, x.dtype)
    c_seen = c_all  # the c that o and h saw: the candidate, before zoneout

    d_pre = np.zeros((T, B, 4 * H), dtype=x.dtype)  # gradient of the pre-activations i, f, g, o
    d_h_new = np.zeros((T, B, P), dtype=x.dtype)  # of each step's new h (for W_hr)
    peepholes = None if weight_peephole is None else np.split(weight_peephole, 3)
    if noise is not None:
        c_seen = c_all.copy()
    for t in reversed(range(T)):
        # the gates and their slopes in their pre-activations, and h(c_new) and its slope
        (i, f, g, o), slopes, (h_c, dh_c) = _gates_and_slopes(gates[t], c_all[t], options)
        dh_step, dc_step, dh_keep, dc_keep = dh + dy[t], dc, 0, 0
        if noise is not None:
            # forward: c_new = f * c + i * g, then c_new = zone_c(c, c_new), h_new = zone_h(h, ..)
            c_seen[t] = only_valid(valid[t], f * c_prev[t] + i * g)
            (i, f, g, o), slopes, (h_c, dh_c) = _gates_and_slopes(gates[t], c_seen[t], options)
            dh_step, dh_keep = noise.zone_gradient(NoiseMask.ZONEOUT_H, t, dh_step)
            dc_step, dc_keep = noise.zone_gradient(NoiseMask.ZONEOUT_C, t, dc_step)
        # forward: y[t] = h_new  (h_new also feeds step t+1, whose gradient is already in dh)
        d_h_new[t] = only_valid(valid[t], dh_step)
        # forward: h_new = o * np.tanh(c_new)  [then h_new = h_new @ weight_hr.T]
        d_o_tanh_c = d_h_new[t] if weight_hr is None else d_h_new[t] @ weight_hr
        do = d_o_tanh_c * h_c
        dc_new = dc_step + d_o_tanh_c * o * dh_c
        if peepholes is not None:  # forward: pre_o = pre_o + p_o * c_new
            dc_new = dc_new + do * slopes[3] * peepholes[2]
        # forward: c_new = f * c + i * g  (input_forget: f = 1 - i)
        df = dc_new * c_prev[t]
        di = dc_new * g
        dg = dc_new * i
        if options is not None and options.input_forget:
            di, df = di - df, np.zeros_like(df)
        # forward: i, f, g, o = sigmoid(pre_i), sigmoid(pre_f), np.tanh(pre_g), sigmoid(pre_o)
        d_pre[t] = only_valid(
            valid[t],
            np.concatenate(
                [di * slopes[0], df * slopes[1], dg * slopes[2], do * slopes[3]], axis=1
            ),
        )
        # forward: pre = x_proj[t] + linear(h_in, weight_hh, bias_hh), h_in = h * scale;
        # c = advance(valid[t], ...)
        dh_in = d_pre[t] @ weight_hh
        dh = advance(valid[t], (dh_in if scale is None else dh_in * scale) + dh_keep, dh)
        dc_prev = dc_new * f
        if peepholes is not None:  # forward: pre_i, pre_f = pre_i + p_i * c, pre_f + p_f * c
            d_pre_i, d_pre_f = np.split(d_pre[t], 4, axis=1)[:2]
            dc_prev = dc_prev + d_pre_i * peepholes[0] + d_pre_f * peepholes[1]
        dc = advance(valid[t], dc_prev + dc_keep, dc)

    given = grads
    grads = grads_or_zeros(None if frozen else grads, weight_ih, weight_hh, weight_hr)
    if weight_hr is not None:
        # forward: h_new = (o * np.tanh(c_new)) @ weight_hr.T, for all t (zero where padded)
        o = np.split(gates, 4, axis=2)[3]
        if options is None:
            o_tanh_c = o * np.tanh(c_all)
        else:
            f_gate, _, h_act = options.gates()
            o_tanh_c = only_valid(valid, f_gate.value(o) * h_act.act.value(c_all))
        accumulate_linear(grads["weight_hr"], None, o_tanh_c, d_h_new)
    if weight_peephole is not None:
        # forward: pre_i += p_i * c, pre_f += p_f * c, pre_o += p_o * c_new, for all t
        d_pre_i, d_pre_f, _, d_pre_o = np.split(d_pre, 4, axis=2)
        if "weight_peephole" not in grads:
            grads["weight_peephole"] = np.zeros_like(weight_peephole)
        grads["weight_peephole"] += np.concatenate(
            [
                (d * c).sum(axis=(0, 1))
                for d, c in ((d_pre_i, c_prev), (d_pre_f, c_prev), (d_pre_o, c_seen))
            ]
        )
    # forward: pre = x_proj[t] + linear(h * scale, weight_hh, bias_hh), for all t
    h_in = h_prev if scale is None else h_prev * scale
    accumulate_linear(grads["weight_hh"], grads["bias_hh"], h_in, d_pre)
    # forward: x_proj = linear(x, weight_ih, bias_ih)
    accumulate_linear(grads["weight_ih"], grads["bias_ih"], x, d_pre)
    # zero at padded steps (the contract), also when weight_ih holds NaN / Inf
    dx = in_step_order(only_valid(valid, d_pre @ weight_ih), lengths, reverse)
    return (dx if input_grad else None), dh, dc, keep_wanted(grads, given, frozen)


def _gates_and_slopes(saved: np.ndarray, c_new: np.ndarray, options: CellOptions | None) -> tuple:
    """One step's gates ``(i, f, g, o)``, their slopes in their pre-activations, and
    ``(h(c_new), h'(c_new))``, from what the forward saved: the activated gates (PyTorch's cell)
    or their pre-activations (with options)."""
    if options is None:
        i, f, g, o = np.split(saved, 4, axis=1)
        tanh_c = np.tanh(c_new)
        slopes = (dsigmoid(i), dsigmoid(f), dtanh(g), dsigmoid(o))
        return (i, f, g, o), slopes, (tanh_c, dtanh(tanh_c))
    f_gate, g_gate, h_act = options.gates()
    pre_i, pre_f, pre_g, pre_o = np.split(saved, 4, axis=1)
    i = f_gate.value(pre_i)
    f = 1 - i if options.input_forget else f_gate.value(pre_f)
    values = (i, f, g_gate.value(pre_g), f_gate.value(pre_o))
    slopes = (f_gate.slope(pre_i), f_gate.slope(pre_f), g_gate.slope(pre_g), f_gate.slope(pre_o))
    return values, slopes, (h_act.act.value(c_new), h_act.act.slope(c_new))
