"""What every fusedrnn module with parameters shares: live parameter arrays under PyTorch's names,
gradients accumulated by backward, state dicts, training and eval modes.

The recurrent layers and cells, the attention layers, Embedding and Linear all build on
`ParameterModule`, so that optimizers, clipping and ``load_state_dict`` treat them alike.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping

import numpy as np

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype: object) -> np.dtype:
    """A module's dtype: float32 or float64, else ValueError."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in DTYPES:
        raise ValueError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}")
    return resolved


def check_size(value: object, name: str, minimum: int | None = 1) -> int:
    """``value`` as an int >= ``minimum`` (None: any); TypeError / ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        size = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if minimum is not None and size < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {size}")
    return size


def as_float_array(value: object, name: str) -> np.ndarray:
    """A real floating-point ndarray from an array-like; TypeError naming ``name`` otherwise."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:  # RuntimeError: a tensor needing grad
        raise TypeError(f"{name} cannot be read as an array: {error}") from None
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must hold real floating-point numbers, but has dtype "
                        f"{array.dtype}")
    return array


def cache_aligned_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros that start on a 64-byte cache line (numpy's own arrays start on 16 bytes).

    The kernels' threads accumulate into disjoint columns of a weight gradient; with the rows
    aligned, two cores never write the same cache line.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class ParameterModule:
    """Parameters (``_params``, the live arrays) and their gradients (``grads``, same names).

    Subclasses set ``dtype``, fill the parameters with `_set_parameters`, define ``forward`` and
    may override `_after_load` (e.g. to discard the state a forward saved for backward).
    """

    dtype: np.dtype
    training: bool = True

    def _set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        """The parameters, as C-contiguous arrays of the module's dtype, and zeroed gradients."""
        self._params = {name: np.ascontiguousarray(value, dtype=self.dtype)
                        for name, value in params.items()}
        self.grads = {name: cache_aligned_zeros(value.shape, self.dtype)
                      for name, value in self._params.items()}

    def __call__(self, *args, **kwargs):
        """Same as ``forward``."""
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - every module defines its own
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    def __getattr__(self, name: str) -> np.ndarray:
        # ``layer.weight_ih_l0``, ``linear.weight`` as in PyTorch: the live parameter array.
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` of every parameter, in PyTorch's order.

        These are the live arrays: an optimizer updates them in place, e.g.
        ``p -= lr * module.grads[name]``; backward reads them as they are when it runs.
        """
        return iter(self._params.items())

    def parameters(self) -> Iterator[np.ndarray]:
        """Every parameter array (live), in the order of `named_parameters`."""
        return iter(self._params.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, keyed by PyTorch's names, in PyTorch's order.

        Copies, unlike PyTorch's references: a saved state dict does not change when the module
        trains on. Use `named_parameters` for the live arrays.
        """
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Copy parameters in from any mapping of names to array-likes.

        Every entry must be a real floating-point array-like (numpy arrays, lists, or PyTorch
        tensors through ``{k: v.detach().numpy() ...}``) of the parameter's shape; it is cast to
        the module's dtype (the one conversion a module makes on purpose). A missing,
        unexpected, wrongly shaped or non-float entry is an error naming it, and nothing is
        loaded then.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        missing = [name for name in self._params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self._params]
        if missing or unexpected:
            raise ValueError(f"state_dict does not fit {self!r}: missing {missing}, "
                             f"unexpected {unexpected}")
        loaded = {}
        for name, param in self._params.items():
            loaded[name] = as_float_array(state_dict[name], f"state_dict[{name!r}]")
            if loaded[name].shape != param.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {loaded[name].shape}, but "
                                 f"{self!r} expects {param.shape}; is it from another "
                                 f"architecture or size?")
        for name, value in loaded.items():
            np.copyto(self._params[name], value, casting="same_kind")
        self._after_load()

    def _after_load(self) -> None:
        """Called when `load_state_dict` has copied new parameters in."""

    def zero_grad(self) -> None:
        """Set every entry of ``grads`` to zero, in place (the arrays stay the same objects)."""
        for value in self.grads.values():
            value.fill(0)

    def train(self, mode: bool = True):
        """Training mode (default): forward saves what backward needs (and dropout is on)."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Eval mode: forward saves nothing (and no dropout). Same as ``train(False)``."""
        return self.train(False)
