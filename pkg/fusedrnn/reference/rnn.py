"""Elman RNN, one layer, one direction, a whole sequence: the plain NumPy reference.

Per step ``h' = act(linear(x_t, W_ih, b_ih) + linear(h, W_hh, b_hh))``, ``act`` tanh or relu.
The workspace is empty: backward reads the activation's derivative off ``y``.

With ONNX's options (``options``, a `fusedrnn._cell_options.CellOptions`; docs/onnx.md),
``act`` is the options' activation f of the clipped pre-activation (``nonlinearity`` is not
read), and the workspace is the pre-activations ``(T, B, H)``, flat (zero where padded).

Variable lengths and the reverse direction follow the layer-stack contract (docs/kernels.md):
item b runs only its own steps ``0 .. lengths[b]-1`` (backwards from ``lengths[b]-1`` when
``reverse``); the workspace stays empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ._common import (
    accumulate_linear,
    advance,
    check_shapes,
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
    split_workspace,
    valid_steps,
)

if TYPE_CHECKING:
    from .._cell_options import CellOptions


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0)


def _drelu(h: np.ndarray) -> np.ndarray:
    """Derivative of relu from its output: 1 where ``h > 0``, else 0 (0 at the kink)."""
    return (h > 0).astype(h.dtype)


# nonlinearity -> (activation, its derivative written in terms of the activation's output)
_ACTIVATIONS = {"tanh": (np.tanh, dtanh), "relu": (_relu, _drelu)}


def _activation(nonlinearity: str):
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return _ACTIVATIONS[nonlinearity]


def rnn_forward(
    x: np.ndarray,
    h0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray,
    bias_hh: np.ndarray,
    nonlinearity: str = "tanh",
    training: bool = True,
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    options: CellOptions | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run an Elman RNN over a sequence.

    Parameters
    ----------
    x : (T, B, I) array
        Input sequence, time-major.
    h0 : (B, H) array
        Initial hidden state.
    weight_ih : (H, I) array
    weight_hh : (H, H) array
    bias_ih, bias_hh : (H,) arrays
    nonlinearity : {"tanh", "relu"}
    training : bool
        Whether to return the (empty) workspace.
    lengths : (B,) ints in 1..T, optional
        Item b has ``lengths[b]`` steps; later steps leave its state unchanged and output zeros.
        ``None``: every item has all T steps.
    reverse : bool
        Run each item from its own last step ``lengths[b] - 1`` back to 0 (the reverse half of a
        bidirectional layer). ``y`` stays indexed by time.
    options : CellOptions, optional
        ONNX's activations and clip (module docstring). ``None``: PyTorch's cell.

    Returns
    -------
    y : (T, B, H) array
        ``y[t]`` is the hidden state after the step that read ``x[t]``; zero where
        ``t >= lengths[b]``.
    h_n : (B, H) array
        The state after each item's own last step (a copy of ``h0`` when T = 0).
    workspace : (0,) array or None
        Empty, of the input dtype, when training; ``None`` otherwise.
    """
    act = _activation(nonlinearity)[0] if options is None else options.gates()[0].value
    T, B, _, H = check_shapes(
        "rnn", x, h0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh
    )
    pre_all = np.zeros((T, B, H), dtype=x.dtype)  # with options: saved for backward
    lengths = lengths_or_full(lengths, T, B)
    valid = valid_steps(lengths, T)  # (T, B, 1); in step order too, as the own steps are a prefix
    y = np.zeros((T, B, H), dtype=x.dtype)  # in step order

    # (T, B, H): the input part of every step at once
    x_proj = linear(in_step_order(x, lengths, reverse), weight_ih, bias_ih)
    h = h0
    for t in range(T):
        pre = x_proj[t] + linear(h, weight_hh, bias_hh)
        h_new = act(pre)
        if options is not None:
            pre_all[t] = only_valid(valid[t], pre)
        # items past their own last step keep their state and output zeros
        h = advance(valid[t], h_new, h)
        y[t] = only_valid(valid[t], h_new)

    workspace = new_workspace("rnn", T, B, H, x.dtype) if training else None
    if training and options is not None:
        workspace = in_step_order(pre_all, lengths, reverse).reshape(-1)
    return in_step_order(y, lengths, reverse), h.copy(), workspace


def rnn_backward(
    x: np.ndarray,
    h0: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    y: np.ndarray,
    workspace: np.ndarray | None,
    dy: np.ndarray | None = None,
    dh_n: np.ndarray | None = None,
    nonlinearity: str = "tanh",
    grads: dict[str, np.ndarray] | None = None,
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    options: CellOptions | None = None,
    input_grad: bool = True,
    frozen=(),
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backpropagate through ``rnn_forward``.

    Parameters
    ----------
    x, h0, weight_ih, weight_hh
        As given to ``rnn_forward`` (shapes there).
    y : (T, B, H) array
        The forward's ``y``; the activation's derivative is read off it.
    workspace : (0,) array or None
        The forward's (empty) workspace; not needed, so ``None`` is accepted too.
    dy : (T, B, H) array, optional
        Gradient of the loss with respect to ``y``; ``None`` means zeros. Entries at padded
        positions ``t >= lengths[b]`` are ignored.
    dh_n : (B, H) array, optional
        Gradient with respect to ``h_n``; ``None`` means zeros. Enters at each item's own last
        step.
    nonlinearity : {"tanh", "relu"}
        As given to the forward.
    grads : dict, optional
        ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih`` (H,), ``bias_hh`` (H,):
        accumulated into with ``+=``. ``None`` makes a fresh zeroed dict.
    lengths, reverse, options
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
        "rnn", x, h0, weight_ih=weight_ih, weight_hh=weight_hh, y=y, dy=dy, dh_n=dh_n
    )
    if options is None:
        dact = _activation(nonlinearity)[1]
        if workspace is not None:
            split_workspace(workspace, "rnn", T, B, H, x.dtype)  # only checks it is the empty one
    elif workspace is None or workspace.shape != (T * B * H,) or workspace.dtype != x.dtype:
        raise ValueError(
            f"rnn with options: workspace must be the forward's pre-activations, flat "
            f"(T*B*H = {T * B * H},) of dtype {x.dtype}; got "
            f"{None if workspace is None else (workspace.shape, workspace.dtype)}"
        )
    lengths = lengths_or_full(lengths, T, B)
    frozen = frozen_names(frozen)
    valid = valid_steps(lengths, T)
    # everything below in step order (the order the forward ran its steps)
    # padded steps are no input: whatever x holds there (np.empty garbage, NaN) must not
    # reach the weight gradients through 0 * NaN
    x = only_valid(valid, in_step_order(x, lengths, reverse))
    y = in_step_order(y, lengths, reverse)
    dy = only_valid(valid, in_step_order(grad_or_zeros(dy, (T, B, H), x.dtype), lengths, reverse))
    dh = grad_or_zeros(dh_n, (B, H), x.dtype)
    h_prev = previous_states(h0, y)
    if options is not None:  # the slope of act in the saved pre-activations, in step order
        pre = in_step_order(workspace.reshape(T, B, H), lengths, reverse)
        slope = options.gates()[0].slope(pre)

    d_pre = np.zeros((T, B, H), dtype=x.dtype)  # gradient of the pre-activation
    for t in reversed(range(T)):
        # forward: y[t] = h_new  (h_new also feeds step t+1, whose gradient is already in dh)
        dh_new = dh + dy[t]
        # forward: h_new = act(x_proj[t] + linear(h, weight_hh, bias_hh)), act' read off y[t]
        d_pre[t] = only_valid(valid[t], dh_new * (dact(y[t]) if options is None else slope[t]))
        # forward: h = advance(valid[t], h_new, h)
        dh = advance(valid[t], d_pre[t] @ weight_hh, dh)

    given = grads
    grads = grads_or_zeros(None if frozen else grads, weight_ih, weight_hh)
    # forward: h = act(x_proj[t] + linear(h, weight_hh, bias_hh)), for all t
    accumulate_linear(grads["weight_hh"], grads["bias_hh"], h_prev, d_pre)
    # forward: x_proj = linear(x, weight_ih, bias_ih)
    accumulate_linear(grads["weight_ih"], grads["bias_ih"], x, d_pre)
    # zero at padded steps (the contract), also when weight_ih holds NaN / Inf
    dx = in_step_order(only_valid(valid, d_pre @ weight_ih), lengths, reverse)
    return (dx if input_grad else None), dh, keep_wanted(grads, given, frozen)
