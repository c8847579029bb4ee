"""The losses, as PyTorch's: `CrossEntropyLoss` (logits and class targets), `NLLLoss`
(log-probabilities and class targets) and `MSELoss`.

Every loss is called as ``loss = loss_fn(input, target)`` and ``d_input = loss_fn.backward()``;
``backward(d_loss)`` scales the gradient by the gradient of the loss itself (an array of the
loss's shape for ``reduction='none'``). The class axis is the **last** one, ``(..., C)``, as the
recurrent layers' outputs and `fusedrnn.Linear` give it; PyTorch's ``(N, C, ...)`` puts it second
(move it with ``np.moveaxis(x, 1, -1)``).

`CrossEntropyLoss` with hard targets, no class weights and a 'mean' or 'sum' reduction runs the
fused C++ kernel `fusedrnn.functional.cross_entropy` (loss and gradient in one pass over each
row), or its NumPy twin with ``backend='reference'``; with ``weight``, ``label_smoothing`` or
``reduction='none'`` it is `log_softmax` followed by the negative log-likelihood, in NumPy.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._checks import (
    check_array,
    check_choice,
    check_float_array,
    check_ignore_index,
    check_probability,
)
from ._module import Module
from .parameter_free import log_softmax, log_softmax_backward

REDUCTIONS = ("mean", "sum", "none")


class _Loss(Module):
    """What the losses share: the reduction, and the check of ``d_loss`` in backward."""

    def __init__(self, reduction: str, backend: str | None = None) -> None:
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        super().__init__(backend=backend)

    def _reduce(self, per_element: np.ndarray, denominator: float, dtype: np.dtype):
        """The loss from the loss of every element: itself ('none'), their sum, or the sum over
        ``denominator`` ('mean': NaN when it is 0, as PyTorch); sums run in float64."""
        if self.reduction == "none":
            return per_element
        total = per_element.sum(dtype=np.float64)
        if self.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                total = total / np.float64(denominator)
        return dtype.type(total)

    def _check_d_loss(self, d_loss: object, loss_shape: tuple, dtype: np.dtype):
        """``d_loss`` as the input's dtype: a real number for 'mean' and 'sum', an array of the
        loss's shape and dtype for 'none'."""
        if self.reduction == "none":
            return check_array(d_loss, "d_loss", dtype, loss_shape)
        if isinstance(d_loss, np.ndarray) and d_loss.ndim == 0:
            d_loss = d_loss[()]
        if isinstance(d_loss, (bool, np.bool_)) or not isinstance(d_loss, numbers.Real):
            raise TypeError(
                f"d_loss must be a real number for reduction={self.reduction!r} (the loss is "
                f"a scalar), got {type(d_loss).__name__}"
            )
        return dtype.type(d_loss)


# ---------------------------------------------------------------- class targets


def _check_class_weight(weight: object) -> np.ndarray | None:
    """A read-only copy of a (C,) float32 or float64 array of class weights, or None."""
    if weight is None:
        return None
    weight = check_float_array(weight, "weight")
    if weight.ndim != 1:
        raise ValueError(f"weight must have shape (C,), one per class, but has {weight.shape}")
    weight = weight.copy()
    weight.flags.writeable = False
    return weight


class _ClassTargetLoss(_Loss):
    """`NLLLoss` and `CrossEntropyLoss`: scores (..., C), integer targets (...), class weights,
    ``ignore_index``, and the negative log-likelihood of log-probabilities with PyTorch's label
    smoothing (0 for NLLLoss)."""

    def __init__(
        self, weight: object, ignore_index: int, reduction: str, backend: str | None = None
    ) -> None:
        super().__init__(reduction, backend)
        self.weight = _check_class_weight(weight)
        self.ignore_index = check_ignore_index(ignore_index)
        self.label_smoothing = 0.0

    def _repr_args(self) -> list:
        args = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.weight is not None:
            args.insert(0, f"weight=<{self.weight.shape[0]} class weights>")
        return args

    def _check_scores(self, scores: object, name: str) -> np.ndarray:
        """``scores`` (..., C), C >= 1, float32 or float64 (and the weights' dtype and C)."""
        scores = check_float_array(scores, name)
        if scores.ndim == 0 or scores.shape[-1] == 0:
            raise ValueError(
                f"{name} must have shape (..., C) with C >= 1 classes, but has {scores.shape}"
            )
        if self.weight is not None:
            if self.weight.shape[0] != scores.shape[-1]:
                raise ValueError(
                    f"weight has {self.weight.shape[0]} entries, but {name} has "
                    f"C = {scores.shape[-1]} classes"
                )
            if self.weight.dtype != scores.dtype:
                raise TypeError(
                    f"weight has dtype {self.weight.dtype}, but {name} has {scores.dtype}; "
                    f"build the loss with weight.astype(np.{scores.dtype})"
                )
        return scores

    def _check_targets(self, targets: object, scores: np.ndarray, name: str) -> np.ndarray:
        """``targets`` (the leading shape of ``scores``), any integer dtype, each a class in
        [0, C) or ``ignore_index``: flattened, as int64."""
        if not isinstance(targets, np.ndarray):
            raise TypeError(
                f"targets must be a numpy.ndarray of integer class indices, got "
                f"{type(targets).__name__}"
            )
        if targets.dtype.kind not in "iu":
            raise TypeError(
                f"targets must have an integer dtype (class indices), got {targets.dtype}"
            )
        if targets.shape != scores.shape[:-1]:
            raise ValueError(
                f"targets must have the leading shape of {name}, {scores.shape[:-1]}, but has "
                f"{targets.shape}"
            )
        flat = targets.reshape(-1).astype(np.int64)
        C = scores.shape[-1]
        bad = np.flatnonzero((flat != self.ignore_index) & ((flat < 0) | (flat >= C)))
        if bad.size:
            where = np.unravel_index(bad[0], targets.shape)
            raise ValueError(
                f"targets[{', '.join(map(str, where))}] = {flat[bad[0]]} is out of range: a "
                f"target must be a class in [0, C) = [0, {C}) or ignore_index = "
                f"{self.ignore_index}"
            )
        return flat

    def _forward_log_probs(self, scores: object, targets: object, name: str, to_log_probs):
        """Check ``scores`` (..., C) and ``targets``, take ``to_log_probs`` of the rows (N, C) of
        the scores, and return the loss of `_nll_forward`, keeping what backward needs."""
        scores = self._check_scores(scores, name)
        flat = self._check_targets(targets, scores, name)
        log_probs = to_log_probs(scores.reshape(-1, scores.shape[-1]))
        row_loss, rows = self._nll_forward(log_probs, flat)
        self._keep_for_backward((scores.shape, log_probs, rows))
        return self._reduce(row_loss.reshape(targets.shape), rows[3], scores.dtype)

    def _backward_log_probs(self, saved: tuple, d_loss: object) -> np.ndarray:
        """The gradient (N, C) of the log-probabilities of the forward that saved ``saved``."""
        shape, log_probs, rows = saved
        d_loss = self._check_d_loss(d_loss, shape[:-1], log_probs.dtype)
        return self._nll_backward(log_probs.shape, rows, d_loss)

    def _nll_forward(self, log_probs: np.ndarray, targets: np.ndarray):
        """The loss of log-probabilities (N, C) against flat targets (N,), and what backward
        needs: PyTorch's ``(1 - eps) * nll + eps / C * smooth`` with ``nll_n = -w[t_n]
        logp[n, t_n]`` and ``smooth_n = -sum_c w[c] logp[n, c]`` (w = 1 without weights),
        ignored rows 0 and left out of the mean, whose denominator is ``sum_n w[t_n]``."""
        N, C = log_probs.shape
        dtype = log_probs.dtype
        valid = targets != self.ignore_index
        classes = np.where(valid, targets, 0)  # any class, so that ignored rows can be indexed
        row_weight = valid.astype(dtype) if self.weight is None else self.weight[classes] * valid
        picked = log_probs[np.arange(N), classes]
        # np.where, not a product with 0: an ignored row's log-probability may be -inf
        row_loss = np.where(valid, -row_weight * picked, dtype.type(0))
        eps = self.label_smoothing
        if eps:
            weighted = log_probs if self.weight is None else log_probs * self.weight
            smooth = np.where(valid, -weighted.sum(axis=-1), dtype.type(0))
            row_loss = dtype.type(1 - eps) * row_loss + dtype.type(eps / C) * smooth
        denominator = row_weight.sum(dtype=np.float64)
        return row_loss, (valid, classes, row_weight, denominator)

    def _nll_backward(self, shape: tuple, rows: tuple, d_loss) -> np.ndarray:
        """The gradient (N, C) of the loss of `_nll_forward` with respect to the log-probabilities
        (each entry of a 'none' loss scaled by its own ``d_loss``)."""
        valid, classes, row_weight, denominator = rows
        N, C = shape
        dtype = row_weight.dtype
        if self.reduction == "none":
            row_scale = d_loss.reshape(-1)
        elif self.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):  # mean over no weight: NaN
                row_scale = np.full(N, d_loss / np.float64(denominator), dtype)
        else:
            row_scale = np.full(N, d_loss, dtype)
        eps = self.label_smoothing
        d_log_probs = np.zeros(shape, dtype)
        kept = np.flatnonzero(valid)  # only rows that count: ignored rows get exact zeros
        with np.errstate(invalid="ignore"):  # 0 * inf = NaN: PyTorch's too
            d_log_probs[kept, classes[kept]] = (
                -dtype.type(1 - eps) * row_weight[kept] * row_scale[kept]
            )
            if eps:
                class_weight = np.ones(C, dtype) if self.weight is None else self.weight
                d_log_probs[kept] -= dtype.type(eps / C) * row_scale[kept, None] * class_weight
        return d_log_probs


class NLLLoss(_ClassTargetLoss):
    """The negative log-likelihood of log-probabilities and integer class targets, as
    ``torch.nn.NLLLoss``, with the class axis last.

    ``loss_n = -weight[t_n] * log_probs[n, t_n]`` for every position n whose target t_n is
    not ``ignore_index``.

    Parameters
    ----------
    weight : (C,) float32 or float64 array, optional
        A weight per class (default 1): of the input's dtype. The 'mean' divides by the sum of
        the weights of the targets that count.
    ignore_index : int, default -100
        Targets equal to it count for nothing: no loss, a zero gradient row, left out of the
        mean (whose loss is NaN if nothing counts, as PyTorch's).
    reduction : 'mean' (default), 'sum' or 'none'

    Shapes: ``log_probs (..., C)``, float32 or float64 (e.g. a `LogSoftmax` output); ``targets
    (...)``, any integer dtype; the loss a scalar of the input's dtype, or ``(...)`` for 'none'.
    PyTorch takes ``(N, C, d1, ...)`` with the class axis second; here it is the last axis, as
    for `CrossEntropyLoss`.

    Examples
    --------
    >>> loss_fn = NLLLoss(ignore_index=0)
    >>> loss = loss_fn(log_probs, targets)    # log_probs (T, B, C), targets (T, B)
    >>> d_log_probs = loss_fn.backward()      # (T, B, C)
    """

    def __init__(
        self, weight: np.ndarray | None = None, *, ignore_index: int = -100, reduction: str = "mean"
    ) -> None:
        super().__init__(weight, ignore_index, reduction)

    def forward(self, log_probs: np.ndarray, targets: np.ndarray):
        """The loss.

        Parameters
        ----------
        log_probs : (..., C), float32 or float64
        targets : (...), integers in [0, C) or ``ignore_index``

        Returns
        -------
        loss : a numpy scalar of the input's dtype, or (...) for reduction='none'
        """
        return self._forward_log_probs(log_probs, targets, "log_probs", lambda rows: rows)

    def backward(self, d_loss=1.0, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of the last training-mode forward's log-probabilities.

        Parameters
        ----------
        d_loss : a real number (default 1), or for reduction='none' an array of the loss's
            shape and dtype
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        d_log_probs : (..., C), the shape of log_probs
        """
        saved = self._require_saved()
        d_log_probs = self._backward_log_probs(saved, d_loss).reshape(saved[0])
        self._release_saved(retain_graph)
        return d_log_probs


class CrossEntropyLoss(_ClassTargetLoss):
    """Softmax cross-entropy between logits and integer class targets, as
    ``torch.nn.CrossEntropyLoss`` with class-index targets, with the class axis last.

    Parameters
    ----------
    weight : (C,) float32 or float64 array, optional
        A weight per class (default 1), of the logits' dtype; as in `NLLLoss`.
    ignore_index : int, default -100
        Targets equal to it count for nothing: no loss, a zero gradient row, and they are left
        out of the mean's denominator.
    reduction : 'mean' (default), 'sum' or 'none'
        'mean' over the targets not ignored (weighted by ``weight``); if every target is ignored
        the loss is NaN (0/0) and the gradient zero, as in PyTorch. 'none': the loss of every
        position, ``(...)``.
    label_smoothing : float in [0, 1], default 0
        PyTorch's: the target is ``(1 - label_smoothing)`` on the class plus
        ``label_smoothing / C`` spread over every class, i.e. ``loss = (1 - eps) * nll +
        eps / C * sum_c -weight[c] log_softmax(logits)[c]``, both terms reduced alike.
    backend : 'fused' (default) or 'reference'
        For hard targets without weights and a 'mean' or 'sum' reduction: the fused C++ kernel
        or its NumPy twin. Anything else is computed in NumPy with either.

    Shapes: ``logits (..., C)``, float32 or float64; ``targets (...)``, any integer dtype; the
    loss a scalar of the logits' dtype, or ``(...)`` for 'none'. PyTorch takes ``(N, C, d1,
    ...)`` with the class axis second.

    Examples
    --------
    >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    >>> loss = loss_fn(logits, targets)       # logits (T, B, V), targets (T, B) integers
    >>> dlogits = loss_fn.backward()          # (T, B, V)
    """

    def __init__(
        self,
        weight: np.ndarray | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        backend: str = "fused",
    ) -> None:
        super().__init__(weight, ignore_index, reduction, backend)
        self.label_smoothing = check_probability(label_smoothing, "label_smoothing")

    def _repr_args(self) -> list:
        args = super()._repr_args()
        if self.label_smoothing:
            args.append(f"label_smoothing={self.label_smoothing}")
        return args

    @property
    def _fused(self) -> bool:
        """Whether the kernel computes this loss: hard targets, no weights, a scalar loss."""
        return self.weight is None and not self.label_smoothing and self.reduction != "none"

    def forward(self, logits: np.ndarray, targets: np.ndarray):
        """The loss; in training mode, on the kernel, the gradient of the logits is computed in
        the same pass.

        Parameters
        ----------
        logits : (..., C), float32 or float64
        targets : (...), integers in [0, C) or ``ignore_index``; the leading shape of
            ``logits``

        Returns
        -------
        loss : numpy scalar of the logits' dtype, or (...) for reduction='none'
        """
        if not self._fused:
            return self._forward_numpy(logits, targets)
        if not isinstance(logits, np.ndarray) or logits.ndim < 1:
            raise TypeError(
                f"logits must be a numpy.ndarray of shape (..., num_classes), got "
                f"{getattr(logits, 'shape', type(logits).__name__)}"
            )
        if isinstance(targets, np.ndarray) and targets.shape != logits.shape[:-1]:
            raise ValueError(
                f"targets must have the leading shape of logits, "
                f"{logits.shape[:-1]}, but has {targets.shape}"
            )
        V = logits.shape[-1]
        flat_targets = targets.reshape(-1) if isinstance(targets, np.ndarray) else targets
        loss, dlogits = self._backend.cross_entropy(
            logits.reshape(-1, V),
            flat_targets,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            grad=self.training,
        )
        # in training mode the gradient came with the loss; eval mode computes the loss only
        self._keep_for_backward(None if dlogits is None else dlogits.reshape(logits.shape))
        return loss

    def _forward_numpy(self, logits: object, targets: object):
        """`log_softmax`, then `_nll_forward`: for weights, label smoothing or 'none'."""
        return self._forward_log_probs(
            logits, targets, "logits", lambda rows: log_softmax(rows, axis=-1)
        )

    def backward(self, d_loss=1.0, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of ``d_loss * loss`` with respect to the last training forward's logits.

        Parameters
        ----------
        d_loss : a real number (default 1), or for reduction='none' an array of the loss's
            shape and dtype
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dlogits : the shape of logits. On the kernel with ``d_loss = 1`` it is the loss's own
            buffer (no copy), replaced by the next forward.
        """
        saved = self._require_saved()
        if self._fused:
            dlogits = saved
            d_loss = self._check_d_loss(d_loss, (), dlogits.dtype)
            self._release_saved(retain_graph)
            return dlogits if d_loss == 1 else dlogits * d_loss
        shape, log_probs, _ = saved
        d_log_probs = self._backward_log_probs(saved, d_loss)
        self._release_saved(retain_graph)
        return log_softmax_backward(log_probs, d_log_probs, axis=-1).reshape(shape)


class MSELoss(_Loss):
    """The mean squared error, as ``torch.nn.MSELoss``: ``(input - target) ** 2`` of every
    entry, reduced.

    Parameters
    ----------
    reduction : 'mean' (default: over every entry; NaN for empty input, as PyTorch), 'sum' or
        'none'

    Shapes: ``input`` and ``target`` of one shape (any) and one dtype, float32 or float64 (no
    broadcasting: PyTorch warns for it, here it is an error); the loss a scalar of their dtype,
    or their shape for 'none'. ``backward`` returns the gradient of ``input``; that of
    ``target`` is its negative.
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def _repr_args(self) -> list:
        return [f"reduction={self.reduction!r}"]

    def forward(self, input: np.ndarray, target: np.ndarray):
        """The loss.

        Parameters
        ----------
        input : (...), float32 or float64
        target : the shape and dtype of input

        Returns
        -------
        loss : a numpy scalar of the input's dtype, or (...) for reduction='none'
        """
        input = check_float_array(input, "input")
        check_array(target, "target", input.dtype, input.shape)
        diff = input - target
        self._keep_for_backward(diff)
        return self._reduce(diff * diff, diff.size, input.dtype)

    def backward(self, d_loss=1.0, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of the last training-mode forward's ``input``: ``2 (input - target)``
        times ``d_loss`` (over the number of entries for 'mean').

        Parameters
        ----------
        d_loss : a real number (default 1), or for reduction='none' an array of the loss's
            shape and dtype
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        d_input : the shape of input
        """
        saved = self._require_saved()
        diff = saved
        d_loss = self._check_d_loss(d_loss, diff.shape, diff.dtype)
        self._release_saved(retain_graph)
        # PyTorch's (2 / size) * diff * d_loss; an empty input has an empty gradient
        norm = 2.0 / max(diff.size, 1) if self.reduction == "mean" else 2.0
        return diff.dtype.type(norm) * diff * d_loss
