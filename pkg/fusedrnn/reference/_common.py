"""Helpers shared by the reference cells: activations, shapes, workspaces, gradient buffers.

Every formula used by more than one cell lives here, once.
"""

from __future__ import annotations

import numpy as np

# Gate blocks of H rows each in weight_ih / weight_hh, and the workspace layout per cell
# (docs/kernels.md): a gates part (T, B, GATES*H) then a second part (T, B, SAVED*H).
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
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
    dweight: np.ndarray, dbias: np.ndarray, inp: np.ndarray, dout: np.ndarray
) -> None:
    """Backward of ``out[t] = linear(inp[t], weight, bias)`` for the weight and bias, all steps.

    Adds (``+=``) into ``dweight`` (rows, K) and ``dbias`` (rows,), which may be row-slices
    (views) of the grads dict. ``inp`` is (T, B, K), ``dout`` is (T, B, rows).
    """
    dweight += np.einsum("tbg,tbk->gk", dout, inp)
    dbias += dout.sum(axis=(0, 1))


def check_shapes(
    cell: str, x: np.ndarray, h0: np.ndarray, **arrays: np.ndarray | None
) -> tuple[int, int, int, int]:
    """Return ``(T, B, I, H)`` read off ``x`` (T, B, I) and ``h0`` (B, H).

    Every other array, passed by its contract name (``c0``, ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``, ``y``, ``dy``, ``dh_n``, ``dc_n``; ``None`` skipped), must have the
    contract's shape (else ``ValueError``) and the dtype of ``x`` (else ``TypeError``).
    """
    if x.ndim != 3 or h0.ndim != 2:
        raise ValueError(f"{cell}: x must be (T, B, I) and h0 (B, H), got {x.shape} and {h0.shape}")
    T, B, I = x.shape
    H = h0.shape[1]
    GH = GATES[cell] * H
    expected = {
        "h0": (B, H),
        "c0": (B, H),
        "weight_ih": (GH, I),
        "weight_hh": (GH, H),
        "bias_ih": (GH,),
        "bias_hh": (GH,),
        "y": (T, B, H),
        "dy": (T, B, H),
        "dh_n": (B, H),
        "dc_n": (B, H),
    }
    for name, array in {"h0": h0, **arrays}.items():
        if array is None:
            continue
        if array.shape != expected[name]:
            raise ValueError(
                f"{cell}: {name} has shape {array.shape}, expected {expected[name]} "
                f"for T={T}, B={B}, I={I}, H={H}"
            )
        if array.dtype != x.dtype:
            raise TypeError(f"{cell}: {name} is {array.dtype} but x is {x.dtype}")
    return T, B, I, H


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
    grads: dict[str, np.ndarray] | None, weight_ih: np.ndarray, weight_hh: np.ndarray
) -> dict[str, np.ndarray]:
    """The parameter-gradient dict to accumulate into: ``grads`` itself, or fresh zeros."""
    if grads is not None:
        return grads
    rows = weight_ih.shape[0]
    return {
        "weight_ih": np.zeros_like(weight_ih),
        "weight_hh": np.zeros_like(weight_hh),
        "bias_ih": np.zeros(rows, dtype=weight_ih.dtype),
        "bias_hh": np.zeros(rows, dtype=weight_ih.dtype),
    }
