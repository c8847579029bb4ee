"""Helpers shared by the reference cells: activations, shapes, workspaces, gradient buffers,
variable lengths and the per-item time reversal.

Every formula used by more than one cell lives here, once.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._checks import check_frozen, check_lengths
from .._spec import (
    CELL_PARAMETERS,
    GATES,  # gate blocks of H rows each in weight_ih / weight_hh
)

# The workspace layout per cell (docs/kernels.md): a gates part (T, B, GATES*H) then a second
# part (T, B, SAVED*H).
_WORKSPACE_BLOCKS = {"lstm": (4, 1), "gru": (3, 1), "rnn": (0, 0)}


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function, stable for any ``a``: no overflow, exact 0 / 1 limits, keeps the dtype."""
    with np.errstate(under="ignore"):  # exp(-1000) = 0 is the right answer, not an error
        e = np.exp(-np.abs(a))  # in [0, 1], so nothing below can overflow
        return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def dsigmoid(s: np.ndarray) -> np.ndarray:
    """Derivative of the sigmoid, written in terms of its output ``s = sigmoid(a)``."""
    return s * (1 - s)


def dtanh(t: np.ndarray) -> np.ndarray:
    """Derivative of tanh, written in terms of its output ``t = tanh(a)``."""
    return 1 - t * t


def linear(inp: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``inp @ weight.T + bias`` over the last axis: the affine map every gate starts with."""
    return inp @ weight.T + bias


def accumulate_linear(
    dweight: np.ndarray, dbias: np.ndarray | None, inp: np.ndarray, dout: np.ndarray
) -> None:
    """Backward of ``out[t] = linear(inp[t], weight, bias)`` for the weight and bias, all steps.

    Adds (``+=``) into ``dweight`` (rows, K) and ``dbias`` (rows,), which may be row-slices
    (views) of the grads dict; ``dbias=None`` for a map without bias (the LSTM projection).
    ``inp`` is (T, B, K), ``dout`` is (T, B, rows).
    """
    dweight += np.einsum("tbg,tbk->gk", dout, inp)
    if dbias is not None:
        dbias += dout.sum(axis=(0, 1))


def check_shapes(
    cell: str, x: np.ndarray, h0: np.ndarray, **arrays: np.ndarray | None
) -> tuple[int, int, int, int]:
    """Return ``(T, B, I, H)`` read off ``x`` (T, B, I) and ``h0`` (B, H).

    Every other array, passed by its contract name (``c0``, ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``, ``weight_hr``, ``y``, ``dy``, ``dh_n``, ``dc_n``; ``None`` skipped),
    must have the contract's shape (else ``ValueError``) and the dtype of ``x`` (else
    ``TypeError``). With an LSTM projection (``weight_hr`` (P, H) given, and ``c0``) ``H`` is read
    off ``c0`` (B, H) and the hidden state has size ``P``: ``h0``, the columns of ``weight_hh``,
    ``weight_hr``'s rows, ``y``, ``dy`` and ``dh_n`` use ``P``; ``c0`` and ``dc_n`` use ``H``.
    """
    projected = arrays.get("weight_hr") is not None
    c0 = arrays.get("c0")
    if x.ndim != 3 or h0.ndim != 2 or (projected and (c0 is None or c0.ndim != 2)):
        raise ValueError(
            f"{cell}: x must be (T, B, I), h0 (B, H) and with weight_hr c0 (B, H), got {x.shape}, "
            f"{h0.shape} and {None if c0 is None else c0.shape}"
        )
    T, B, I = x.shape
    H_out = h0.shape[1]  # the size of h: H, or P with a projection
    H = c0.shape[1] if projected else H_out
    GH = GATES[cell] * H
    expected = {
        "h0": (B, H_out),
        "c0": (B, H),
        "weight_ih": (GH, I),
        "weight_hh": (GH, H_out),
        "bias_ih": (GH,),
        "bias_hh": (GH,),
        "weight_hr": (H_out, H),
        "y": (T, B, H_out),
        "dy": (T, B, H_out),
        "dh_n": (B, H_out),
        "dc_n": (B, H),
    }
    sizes = f"T={T}, B={B}, I={I}, H={H}" + (f", P={H_out}" if projected else "")
    for name, array in {"h0": h0, **arrays}.items():
        if array is None:
            continue
        if array.shape != expected[name]:
            raise ValueError(
                f"{cell}: {name} has shape {array.shape}, expected {expected[name]} for {sizes}"
            )
        if array.dtype != x.dtype:
            raise TypeError(f"{cell}: {name} is {array.dtype} but x is {x.dtype}")
    return T, B, I, H


def lengths_or_full(lengths: ArrayLike | None, T: int, B: int) -> np.ndarray:
    """``lengths`` checked (`fusedrnn._checks.check_lengths`: a fresh int64 array (B,), each in
    1..T); ``None`` means every item has all ``T`` steps."""
    checked = check_lengths(lengths, T, B)
    return np.full(B, T, dtype=np.int64) if checked is None else checked


def valid_steps(lengths: np.ndarray, T: int) -> np.ndarray:
    """(T, B, 1) bool: True where ``t < lengths[b]``, i.e. position t is one of item b's steps."""
    return (np.arange(T)[:, None] < lengths[None, :])[..., None]


def advance(valid: np.ndarray, new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """A state after a step: ``new`` for the items whose step it is, ``old`` (unchanged) else.

    In backward the same rule carries a state's gradient through the padded steps unchanged.
    """
    return np.where(valid, new, old)


def only_valid(valid: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``value`` for the items whose step it is, zero at padded positions (outputs, saved parts,
    gate gradients)."""
    return np.where(valid, value, 0).astype(value.dtype, copy=False)


def reverse_padded(a: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse each item's own steps in time: ``out[t, b] = a[lengths[b] - 1 - t, b]`` for
    ``t < lengths[b]``; padded positions ``t >= lengths[b]`` stay where they are.

    ``a`` is (T, B, ...); the result is a fresh array. Its own inverse.
    """
    out = a.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = a[:n, b][::-1]
    return out


def in_step_order(a: np.ndarray, lengths: np.ndarray, reverse: bool) -> np.ndarray:
    """``a`` (T, B, ...) indexed by time, in the order the steps run: each item's own steps
    reversed when ``reverse`` (``reverse_padded``), ``a`` itself otherwise.

    Its own inverse, so the same call maps step-ordered results back to time order.
    """
    return reverse_padded(a, lengths) if reverse else a


def workspace_size(cell: str, T: int, B: int, H: int) -> int:
    """Length of the flat workspace a training forward saves for backward.

    Parameters
    ----------
    cell : {"lstm", "gru", "rnn"}
        Case-insensitive. GRU has the same size with either ``reset_after``.
    T, B, H : int
        Sequence length, batch size, hidden size.

    Returns
    -------
    int
        ``T*B*5H`` (LSTM), ``T*B*4H`` (GRU), ``0`` (RNN).
    """
    key = cell.lower()
    if key not in _WORKSPACE_BLOCKS:
        raise ValueError(f"unknown cell {cell!r}, expected one of {sorted(_WORKSPACE_BLOCKS)}")
    return T * B * H * sum(_WORKSPACE_BLOCKS[key])


def split_workspace(
    workspace: np.ndarray | None, cell: str, T: int, B: int, H: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Views of a flat workspace as its two parts: ``gates (T, B, G*H)`` and ``saved (T, B, H)``.

    Writing into the views writes into ``workspace`` (the forward fills it this way). RNN's
    parts are (T, B, 0). ``ValueError`` if the workspace is missing, too short or too long,
    or of another dtype.
    """
    if workspace is None:
        raise ValueError(f"{cell}: backward needs the workspace of a forward with training=True")
    size = workspace_size(cell, T, B, H)
    if workspace.ndim != 1 or workspace.size != size or workspace.dtype != dtype:
        raise ValueError(
            f"{cell}: workspace must be flat, of length {size} and dtype {np.dtype(dtype)}; "
            f"got shape {workspace.shape} and dtype {workspace.dtype}"
        )
    first, second = _WORKSPACE_BLOCKS[cell]
    split = T * B * first * H
    return (
        workspace[:split].reshape(T, B, first * H),
        workspace[split:].reshape(T, B, second * H),
    )


def new_workspace(cell: str, T: int, B: int, H: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised flat workspace of ``workspace_size(cell, T, B, H)`` elements."""
    return np.empty(workspace_size(cell, T, B, H), dtype=dtype)


def previous_states(s0: np.ndarray, states: np.ndarray) -> np.ndarray:
    """The state entering each step: ``(s0, states[0], ..., states[T-2])``, shape (T, B, H)."""
    T = states.shape[0]
    return np.concatenate([s0[None], states[: T - 1]])[:T]


def grad_or_zeros(grad: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A fresh copy of an output gradient (``dy``, ``dh_n``, ``dc_n``); ``None`` means zeros."""
    if grad is None:
        return np.zeros(shape, dtype=dtype)
    return np.array(grad, dtype=dtype, copy=True)


def grads_or_zeros(
    grads: dict[str, np.ndarray] | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    weight_hr: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The parameter-gradient dict to accumulate into: ``grads`` itself, or fresh zeros.

    With a projection (``weight_hr`` given) the dict also has a ``weight_hr`` key; a given
    ``grads`` without it is a ``ValueError``.
    """
    if grads is not None:
        if weight_hr is not None and "weight_hr" not in grads:
            raise ValueError("grads must have a 'weight_hr' key when weight_hr is given")
        return grads
    rows = weight_ih.shape[0]
    fresh = {
        "weight_ih": np.zeros_like(weight_ih),
        "weight_hh": np.zeros_like(weight_hh),
        "bias_ih": np.zeros(rows, dtype=weight_ih.dtype),
        "bias_hh": np.zeros(rows, dtype=weight_ih.dtype),
    }
    if weight_hr is not None:
        fresh["weight_hr"] = np.zeros_like(weight_hr)
    return fresh


def frozen_names(frozen: object, weight_hr=None, weight_peephole=None) -> frozenset:
    """``frozen`` checked against a one-layer call's parameters: ``CELL_PARAMETERS``, and
    ``weight_hr`` / ``weight_peephole`` when the call has them."""
    names = CELL_PARAMETERS + ("weight_hr",) * (weight_hr is not None)
    return check_frozen(frozen, names + ("weight_peephole",) * (weight_peephole is not None))


def keep_wanted(
    computed: dict[str, np.ndarray], given: dict[str, np.ndarray] | None, frozen: frozenset
) -> dict[str, np.ndarray]:
    """The gradients a backward returns when ``frozen`` names some that are not wanted.

    The reference computes every gradient (into ``computed``, fresh when ``frozen`` is not
    empty) and drops the frozen ones: the wanted ones are added into ``given`` (whose arrays for
    frozen parameters stay untouched), or returned on their own. Without frozen parameters
    ``computed`` is ``given`` or fresh, and is returned as it is.
    """
    if not frozen:
        return computed
    wanted = {name: value for name, value in computed.items() if name not in frozen}
    if given is None:
        return wanted
    for name, value in wanted.items():
        if name in given:
            given[name] += value
        else:
            given[name] = value
    return given
