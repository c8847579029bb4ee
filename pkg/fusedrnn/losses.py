"""`CrossEntropyLoss`: the fused softmax cross-entropy as a layer-like object, as
``torch.nn.CrossEntropyLoss`` with class-index targets.

The math is `fusedrnn.functional.cross_entropy` (C++; loss and gradient in one pass over each row)
or its NumPy twin `fusedrnn.reference.cross_entropy` with ``backend='reference'``.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_choice, check_ignore_index
from ._module import Module


class CrossEntropyLoss(Module):
    """Softmax cross-entropy between logits and integer class targets.

    Parameters
    ----------
    ignore_index : int, default -100
        Targets equal to it count for nothing: no loss, a zero gradient row, and they are left
        out of the mean's denominator.
    reduction : 'mean' (default) or 'sum'
        'mean' over the targets not ignored; if every target is ignored the loss is NaN (0/0)
        and the gradient zero, as in PyTorch.
    backend : 'fused' (default) or 'reference'

    Examples
    --------
    >>> loss_fn = CrossEntropyLoss()
    >>> loss = loss_fn(logits, targets)       # logits (T, B, V), targets (T, B) integers
    >>> dlogits = loss_fn.backward()          # (T, B, V)
    """

    def __init__(
        self, ignore_index: int = -100, reduction: str = "mean", backend: str = "fused"
    ) -> None:
        self.reduction = check_choice(reduction, "reduction", ("mean", "sum"))
        super().__init__(backend=backend)
        self.ignore_index = check_ignore_index(ignore_index)

    def _repr_args(self) -> list:
        return [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]

    def forward(self, logits: np.ndarray, targets: np.ndarray):
        """The loss; in training mode the gradient of the logits is computed in the same pass.

        Parameters
        ----------
        logits : (..., num_classes), float32 or float64
        targets : (...), integers in [0, num_classes) or ``ignore_index``; the leading shape of
            ``logits``

        Returns
        -------
        loss : numpy scalar of the logits' dtype
        """
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

    def backward(self, d_loss: float = 1.0, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of ``d_loss * loss`` with respect to the last training forward's logits.

        Returns
        -------
        dlogits : the shape of logits. With ``d_loss = 1`` it is the loss's own buffer (no
            copy), replaced by the next forward.
        """
        dlogits = self._require_saved()
        self._release_saved(retain_graph)
        if d_loss == 1:
            return dlogits
        return dlogits * dlogits.dtype.type(d_loss)
