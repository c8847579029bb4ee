"""`LayerNorm`: layer normalisation as ``torch.nn.LayerNorm``, on numpy arrays.

Forward and backward are fused in C++ (`fusedrnn.functional.layer_norm_forward` /
``layer_norm_backward``, csrc/layer_norm.h), or run in NumPy (``backend='reference'``).
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import check_eps, check_normalized_shape
from ._module import DTypeLike, Module, grad_or_scratch


class LayerNorm(Module):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the trailing
    ``normalized_shape`` axes of x, as ``torch.nn.LayerNorm``: the mean and the biased variance
    are taken over those axes together, for every position of the leading ones.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
        The trailing shape of the inputs that is normalised.
    eps : float, default 1e-5
        Added to the variance.
    elementwise_affine : bool, default True
        Learn ``weight`` (ones at first) and, with ``bias``, ``bias`` (zeros), both of shape
        normalized_shape. Without it, no parameters (``weight`` and ``bias`` are None).
    bias : bool, default True
        Without it, no ``bias`` parameter.
    dtype : numpy.float32 (default) or numpy.float64
    backend : 'fused' (default) or 'reference'

    The parameters and the state dict are PyTorch's (``weight``, ``bias``), so a
    ``torch.nn.LayerNorm``'s state dict loads as it is.

    Examples
    --------
    >>> norm = LayerNorm(64)
    >>> y = norm(np.ones((10, 8, 64), np.float32))      # (10, 8, 64)
    >>> dx = norm.backward(np.ones_like(y))             # weight.grad and bias.grad filled
    """

    def __init__(
        self,
        normalized_shape: int | tuple,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        backend: str = "fused",
    ) -> None:
        super().__init__(dtype, None, backend)
        self.normalized_shape = check_normalized_shape(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._has_bias = self.elementwise_affine and bool(bias)
        params = {}
        if self.elementwise_affine:
            params["weight"] = np.ones(self.normalized_shape)
            if self._has_bias:
                params["bias"] = np.zeros(self.normalized_shape)
        self._set_parameters(params)

    @property
    def weight(self) -> np.ndarray | None:
        """The live gain, of shape normalized_shape, or None without elementwise_affine."""
        return self._params.get("weight")

    @property
    def bias(self) -> np.ndarray | None:
        """The live bias, of shape normalized_shape, or None (no affine map, or bias=False)."""
        return self._params.get("bias")

    def _repr_args(self) -> list:
        args = [repr(self.normalized_shape), f"eps={self.eps!r}"]
        args.append(f"elementwise_affine={self.elementwise_affine}")
        if self.elementwise_affine and not self._has_bias:
            args.append("bias=False")
        return args

    @property
    def _size(self) -> int:
        """N: the values normalised together."""
        return math.prod(self.normalized_shape)

    def _flat(self, name: str, of_grad: bool = False) -> np.ndarray | None:
        """A parameter (or its gradient: a frozen one's a throw-away array, `grad_or_scratch`)
        as a (N,) view, or None."""
        param = self._params.get(name)
        if param is None:
            return None
        return (grad_or_scratch(param) if of_grad else param.view(np.ndarray)).reshape(-1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise x over its trailing ``normalized_shape`` axes.

        Parameters
        ----------
        x : (..., *normalized_shape), of the layer's dtype

        Returns
        -------
        y : the shape of x

        In training mode x is kept for backward (copied unless it is read-only).
        """
        shape = (..., *self.normalized_shape)
        axes = (..., *(f"normalized_shape[{k}]" for k in range(len(self.normalized_shape))))
        x = self._check_array(x, "x", shape, axes)
        rows = x.reshape(-1, self._size)
        y, mean, rstd = self._backend.layer_norm_forward(
            rows, self._flat("weight"), self._flat("bias"), self.eps, self.training
        )
        if self.training:
            kept = rows.copy() if rows.flags.writeable and np.shares_memory(rows, x) else rows
            self._keep_for_backward((kept, mean, rstd, x.shape))
        else:
            self._keep_for_backward(None)
        return y.reshape(x.shape)

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """Gradients through the last training-mode forward.

        Adds ``sum(d_output * xhat)`` into ``weight.grad`` and ``sum(d_output)`` into
        ``bias.grad`` (over every leading position).

        Parameters
        ----------
        d_output : the shape of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : the shape of x
        """
        rows, mean, rstd, x_shape = self._require_saved()
        axes = (..., *(f"normalized_shape[{k}]" for k in range(len(self.normalized_shape))))
        self._check_array(d_output, "d_output", x_shape, axes)
        grads = {name: self._flat(name, of_grad=True) for name in self._params}
        dx, _ = self._backend.layer_norm_backward(
            rows,
            self._flat("weight"),
            mean,
            rstd,
            d_output.reshape(-1, self._size),
            grads=grads,
            bias=self._has_bias,
        )
        self._release_saved(retain_graph)
        return dx.reshape(x_shape)
