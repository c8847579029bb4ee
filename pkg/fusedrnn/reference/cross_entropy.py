"""Softmax cross-entropy with integer targets: the NumPy twin of the fused
``fusedrnn.functional.cross_entropy`` (csrc/cross_entropy.h), same signature, same errors.

Readable before fast: one NumPy expression per line of math.
"""

from __future__ import annotations

import numpy as np

from .._checks import DTYPES, check_ignore_index


def cross_entropy(
    logits: np.ndarray,
    targets: np.ndarray,
    ignore_index: int = -100,
    reduction: str = "mean",
    grad: bool = True,
):
    """Softmax cross-entropy of the rows of ``logits`` and the gradient of the logits.

    Parameters
    ----------
    logits : (N, num_classes), float32 or float64
    targets : (N,), any integer dtype
        A class in ``[0, num_classes)``, or ``ignore_index`` for a row that does not count.
    ignore_index : int
    reduction : 'mean' or 'sum'
        'mean' divides by the number of rows not ignored; with none it is NaN (0/0), as PyTorch.
    grad : bool
        Also return the gradient of the loss with respect to ``logits``.

    Returns
    -------
    loss : numpy scalar of the logits' dtype
    dlogits : (N, num_classes) or None
        ``scale * (softmax(logits) - onehot(targets))`` with scale 1 (sum) or 1/count (mean);
        zero rows where the target is ignored.
    """
    logits, targets, ignore_index, mean = check_cross_entropy_args(
        logits, targets, ignore_index, reduction
    )
    N = logits.shape[0]
    valid = targets != ignore_index
    classes = np.where(valid, targets, 0)  # any class in range, so ignored rows can be indexed
    rows = np.arange(N)
    # logsumexp with the row maximum subtracted first: exp never overflows
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1)
    row_loss = np.where(valid, np.log(s) - shifted[rows, classes], 0)  # lse(x) - x[t]
    count = int(valid.sum())
    total = row_loss.sum(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        loss = total / count if mean else total  # mean over no rows: 0/0 = NaN
    dlogits = None
    if grad:
        scale = (1.0 / count if count else 0.0) if mean else 1.0
        dlogits = e / s[:, None]  # softmax
        dlogits[rows, classes] -= 1  # - onehot(target)
        dlogits[~valid] = 0
        dlogits *= logits.dtype.type(scale)
    return logits.dtype.type(loss), dlogits


def check_cross_entropy_args(logits, targets, ignore_index, reduction):
    """The checks of the fused binding, with its messages: ``(logits, targets as int64,
    ignore_index, reduction == 'mean')``; TypeError / ValueError naming the argument."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    ignore_index = check_ignore_index(ignore_index)
    if not isinstance(logits, np.ndarray):
        raise TypeError(
            f"logits must be a numpy.ndarray of float32 or float64, got {type(logits).__name__}"
        )
    if logits.dtype not in DTYPES:
        raise TypeError(f"logits must have dtype float32 or float64, got {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"logits must have 2 dimensions (N, num_classes), but has {logits.ndim}")
    N, V = logits.shape
    if V == 0:
        raise ValueError("logits must have num_classes >= 1, but has 0")
    if not isinstance(targets, np.ndarray):
        raise TypeError(
            f"targets must be a numpy.ndarray of integer class indices, got "
            f"{type(targets).__name__}"
        )
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must have an integer dtype (class indices), got {targets.dtype}")
    if targets.shape != (N,):
        raise ValueError(
            f"targets must have shape (N,) = ({N},), one class index per row of "
            f"logits, but has shape {targets.shape}"
        )
    targets = targets.astype(np.int64)
    bad = np.flatnonzero((targets != ignore_index) & ((targets < 0) | (targets >= V)))
    if bad.size:
        n = int(bad[0])
        raise ValueError(
            f"targets[{n}] = {targets[n]} is out of range: a target must be a class "
            f"in [0, num_classes) = [0, {V}) or ignore_index = {ignore_index}"
        )
    return logits, targets, ignore_index, reduction == "mean"
