"""`Dropout`, `LogSoftmax`, `ReLU`, `GELU`, `Tanh` and `Sigmoid`: the layers without parameters,
as ``torch.nn``'s of the same names, in vectorised NumPy.

What the two share is that they have no parameters (neither is elementwise across a row:
LogSoftmax couples the entries of its axis): they take the dtype of their input, float32 or
float64, rather than having one of their own, and their ``grads`` are empty. `log_softmax` and
`log_softmax_backward` are also the math of the losses (`fusedrnn.losses`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, expit

from ._checks import (
    check_array,
    check_axis,
    check_float_array,
    check_probability,
    check_seed,
    check_size,
)
from ._module import Module


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """``x - logsumexp(x)`` along ``axis``, stable for inputs of any magnitude (the maximum is
    subtracted before ``exp``, as PyTorch does), in the dtype of ``x``; a fresh array."""
    out = x - x.max(axis=axis, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=axis, keepdims=True))
    return out


def log_softmax_backward(out: np.ndarray, d_out: np.ndarray, axis: int) -> np.ndarray:
    """The gradient of the input of `log_softmax` from its output ``out`` and ``d_out``:
    ``d_out - softmax * sum(d_out)`` along ``axis`` (``softmax = exp(out)``)."""
    return d_out - np.exp(out) * d_out.sum(axis=axis, keepdims=True)


class Dropout(Module):
    """Inverted dropout, as ``torch.nn.Dropout``: in training mode each entry is zeroed with
    probability ``p`` and the others are scaled by ``1 / (1 - p)``; in eval mode, the identity.

    Parameters
    ----------
    p : float in [0, 1], default 0.5
        ``p = 0`` is the identity and ``p = 1`` zeroes everything, in training mode too, as
        PyTorch's.
    seed : int or None
        Seeds the layer's own generator: the same seed gives the same masks, call after call,
        whatever the dtype of the input. The stream is NumPy's (``numpy.random.default_rng``),
        not PyTorch's: the masks differ from ``torch.nn.Dropout``'s for any seed.

    Shapes: any; ``forward(x)`` returns the shape of ``x``, float32 or float64.

    Examples
    --------
    >>> drop = Dropout(0.2, seed=0)
    >>> y = drop(x)                       # x (..., any), float32 or float64
    >>> dx = drop.backward(np.ones_like(y))
    """

    _repr_fields = (("p", 0.5),)

    def __init__(self, p: float = 0.5, *, seed: int | None = None) -> None:
        if seed is not None:
            check_seed(seed)
        super().__init__(seed=seed)
        self.p = check_probability(p, "p")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x * mask / (1 - p)`` in training mode, a fresh array; ``x`` itself in eval mode or
        when ``p = 0``, as PyTorch's.

        Parameters
        ----------
        x : (...), float32 or float64

        Returns
        -------
        y : the shape and dtype of x
        """
        x = check_float_array(x, "x")
        if not self.training or self.p == 0:
            self._keep_for_backward((None, x.shape, x.dtype))  # eval keeps nothing
            return x
        dtype = x.dtype.type
        if self.p == 1:
            scaled_mask = dtype(0)  # PyTorch's x * 0: a NaN or inf in x stays NaN
        else:
            # float64 draws whatever the dtype, so a seed gives one mask for both dtypes
            scaled_mask = (self._rng.random(x.shape) >= self.p).astype(x.dtype)
            scaled_mask /= dtype(1 - self.p)  # PyTorch's noise.div_(1 - p), in x's dtype
        self._keep_for_backward((scaled_mask, x.shape, x.dtype))
        return x * scaled_mask

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of the last training-mode forward's input: ``d_output`` times the same
        mask (scaled), a fresh array; ``d_output`` itself when ``p = 0``.

        Parameters
        ----------
        d_output : the shape and dtype of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : the shape of x
        """
        saved = self._require_saved()
        scaled_mask, shape, dtype = saved
        check_array(d_output, "d_output", dtype, shape)
        self._release_saved(retain_graph)
        return d_output if scaled_mask is None else d_output * scaled_mask


class LogSoftmax(Module):
    """``log(softmax(x))`` along one axis, as ``torch.nn.LogSoftmax``: ``x - logsumexp(x)``,
    stable for inputs of any magnitude.

    Parameters
    ----------
    dim : int, default -1
        The axis of the softmax (negative counts from the end). PyTorch's ``dim=None`` (an axis
        guessed from the number of axes, deprecated there) is not offered.

    Shapes: ``forward(x)`` with x ``(...)`` of at least one axis, float32 or float64, returns
    the shape of x.
    """

    _repr_fields = (("dim", -1),)

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_size(dim, "dim", minimum=None)  # its range is the input's: at forward

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The log-probabilities along ``dim``.

        Parameters
        ----------
        x : (...), at least one axis, float32 or float64

        Returns
        -------
        out : the shape and dtype of x; read-only in training mode (backward reads it), a
            writeable array in eval mode.
        """
        x = check_float_array(x, "x")
        if x.ndim == 0:
            raise ValueError("x must have at least one axis for LogSoftmax, but is 0-dimensional")
        axis = check_axis(self.dim, "dim", x.ndim)
        out = log_softmax(x, axis)
        if self.training:
            out.flags.writeable = False
        self._keep_for_backward((out, axis))
        return out

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of the last training-mode forward's input: ``d_output -
        softmax * sum(d_output)`` along ``dim``.

        Parameters
        ----------
        d_output : the shape and dtype of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : the shape of x, a fresh array
        """
        saved = self._require_saved()
        out, axis = saved
        check_array(d_output, "d_output", out.dtype, out.shape)
        self._release_saved(retain_graph)
        return log_softmax_backward(out, d_output, axis)


class _Elementwise(Module):
    """An activation applied entry by entry: ``forward`` keeps what the derivative needs,
    ``backward`` multiplies the gradient by the derivative. A subclass gives `_apply` and
    `_derivative`."""

    def _apply(self, x: np.ndarray) -> tuple[np.ndarray, object]:
        """(the activation of x, what `_derivative` needs)."""
        raise NotImplementedError

    def _derivative(self, kept: object) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The activation of every entry.

        Parameters
        ----------
        x : (...), float32 or float64

        Returns
        -------
        y : the shape and dtype of x, a fresh array
        """
        x = check_float_array(x, "x")
        y, kept = self._apply(x)
        self._keep_for_backward((kept, x.shape, x.dtype) if self.training else None)
        return y

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """``d_output`` times the derivative at the last training-mode forward's input.

        Parameters
        ----------
        d_output : the shape and dtype of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : the shape of x, a fresh array
        """
        kept, shape, dtype = self._require_saved()
        check_array(d_output, "d_output", dtype, shape)
        self._release_saved(retain_graph)
        return d_output * self._derivative(kept)


class ReLU(_Elementwise):
    """``max(x, 0)``, as ``torch.nn.ReLU`` (its derivative at 0 is 0, as PyTorch's)."""

    def _apply(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positive = x > 0
        return np.maximum(x, 0), positive

    def _derivative(self, positive: np.ndarray) -> np.ndarray:
        return positive


class GELU(_Elementwise):
    """``x * Phi(x)``, Phi the standard normal CDF, as ``torch.nn.GELU()`` (its exact form, not
    the tanh approximation), computed in the dtype of x."""

    def _apply(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        dtype = x.dtype.type
        cdf = erf(x * dtype(1 / np.sqrt(2)))
        cdf += 1
        cdf *= dtype(0.5)
        return x * cdf, (x.copy(), cdf)

    def _derivative(self, kept: tuple) -> np.ndarray:
        # d/dx x Phi(x) = Phi(x) + x phi(x), phi the normal density
        x, cdf = kept
        dtype = x.dtype.type
        derivative = np.exp(x * x * dtype(-0.5))
        derivative *= x
        derivative *= dtype(1 / np.sqrt(2 * np.pi))
        derivative += cdf
        return derivative


class Tanh(_Elementwise):
    """``tanh(x)``, as ``torch.nn.Tanh``, in the dtype of x."""

    def _apply(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.tanh(x)
        return y, y.copy()  # (the caller may write into the y it gets)

    def _derivative(self, y: np.ndarray) -> np.ndarray:
        return 1 - y * y


class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``, as ``torch.nn.Sigmoid``, in the dtype of x (scipy's ``expit``:
    no overflow at any x)."""

    def _apply(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = expit(x)
        return y, y.copy()

    def _derivative(self, y: np.ndarray) -> np.ndarray:
        return y * (1 - y)
