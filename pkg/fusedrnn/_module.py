"""`Module`: the one base class of every fusedrnn layer, cell, attention layer and loss.

What a user touches the same way on every module is written here, once:

- parameters: live arrays under PyTorch's names in one registry (``_params``), read as attributes
  (``lstm.weight_ih_l0``), their gradients in ``grads`` (same names, added into by every
  backward), ``named_parameters`` / ``parameters`` / ``state_dict`` / ``load_state_dict`` /
  ``zero_grad``;
- the training / eval mode, the dtype, the random generator, and the backend (``'fused'``:
  `fusedrnn.functional`, ``'reference'``: `fusedrnn.reference`);
- the checks of the arrays a user hands in (`_check_array`: the module's dtype and shape, with the
  meaning of every axis, never a cast);
- what a forward keeps for backward, and the error that says why there is nothing to use.

A subclass says only what differs: its parameters (`_set_parameters`), its forward and backward,
and its ``repr`` arguments.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import ClassVar

import numpy as np

from ._checks import check_array, check_choice, check_dtype
from ._thread_guard import guard_training_state

DTypeLike = type | str | np.dtype
BACKENDS = ("fused", "reference")

NO_FORWARD_YET = "no forward has run yet"
EVAL_FORWARD = (
    "the last forward ran in eval mode, which saves nothing for backward; call "
    "train() and run forward again"
)
LOADED = "load_state_dict discarded the state saved by the last forward; run forward again"


def check_backend(name: object) -> str:
    """``name`` if it is a backend: 'fused' or 'reference'."""
    return check_choice(name, "backend", BACKENDS)


_backend_modules: dict[str, ModuleType] = {}  # filled by backend_module, name by name


def backend_module(name: str) -> ModuleType:
    """The functions behind a backend name: `fusedrnn.functional` for 'fused', `fusedrnn.reference`
    for 'reference' (checked: ValueError for any other name).

    Imported when first asked for: the fused path itself never loads the reference.
    """
    # only names that passed check_backend are keys (an unhashable name goes to the check)
    module = _backend_modules.get(name) if isinstance(name, str) else None
    if module is None:
        check_backend(name)
        if name == "fused":
            from . import functional as module
        else:
            from . import reference as module
        _backend_modules[name] = module
    return module


def as_float_array(value: object, name: str) -> np.ndarray:
    """A real floating-point ndarray from an array-like; TypeError naming ``name`` otherwise."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:  # RuntimeError: a tensor needing grad
        raise TypeError(f"{name} cannot be read as an array: {error}") from None
    if array.dtype.kind != "f":
        raise TypeError(
            f"{name} must hold real floating-point numbers, but has dtype {array.dtype}"
        )
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
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class Module:
    """Base of every fusedrnn module (see the module docstring for what it holds).

    Parameters
    ----------
    dtype : numpy.float32 or numpy.float64, optional
        Of the parameters and of every array the module accepts; None for a module without one
        (a loss, whose dtype is that of its input).
    seed : int or None
        Seeds the module's generator (initialisation, dropout).
    backend : 'fused' or 'reference', optional
        None for a module that computes one way only (Embedding).

    Attributes
    ----------
    training : bool
        True after ``train()`` (the default), False after ``eval()``.
    grads : dict of str to ndarray
        The gradient of every parameter, keyed like ``state_dict()``, zeroed at construction and
        by ``zero_grad()``; every ``backward`` adds (``+=``) into these arrays.
    """

    # Whether a forward in eval mode also keeps what backward needs (the attention layers do;
    # the others save nothing in eval mode).
    _saves_in_eval: ClassVar[bool] = False
    # (attribute, default) of the constructor arguments ``repr`` shows when not the default
    _repr_fields: ClassVar[tuple] = ()

    def __init__(
        self, dtype: DTypeLike | None = None, seed: int | None = None, backend: str | None = None
    ) -> None:
        if dtype is not None:
            self.dtype = check_dtype(dtype)
        if backend is not None:
            self.backend = check_backend(backend)
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._params: dict[str, np.ndarray] = {}  # the one registry of parameters, by name
        self.grads: dict[str, np.ndarray] = {}
        self._saved = None  # what the last forward kept for backward
        self._no_saved_reason = NO_FORWARD_YET

    # ------------------------------------------------------------ calling

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        guard_training_state(cls)  # its forward / backward: one thread at a time (_thread_guard)

    def __call__(self, *args, **kwargs):
        """Same as ``forward``."""
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - every module defines its own
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    @property
    def _backend(self) -> ModuleType:
        """The functions of ``self.backend``."""
        return backend_module(self.backend)

    def __repr__(self) -> str:
        args = self._repr_args()
        if getattr(self, "dtype", np.float32) != np.float32:
            args.append(f"dtype=np.{self.dtype}")
        return f"{type(self).__name__}({', '.join(args)})"

    def _repr_args(self) -> list:
        """The arguments ``repr`` shows (but dtype): a subclass puts its required ones first."""
        return [
            f"{name}={getattr(self, name, default)!r}"
            for name, default in self._repr_fields
            if getattr(self, name, default) != default
        ]

    # ------------------------------------------------------------ parameters

    def _set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        """The parameters, as C-contiguous arrays of the module's dtype, and zeroed gradients."""
        self._params = {
            name: np.ascontiguousarray(value, dtype=self.dtype) for name, value in params.items()
        }
        self.grads = {
            name: cache_aligned_zeros(value.shape, self.dtype)
            for name, value in self._params.items()
        }

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
        loaded then. What the last forward saved for backward is discarded.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}"
            )
        missing = [name for name in self._params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self._params]
        if missing or unexpected:
            raise ValueError(
                f"state_dict does not fit {self!r}: missing {missing}, unexpected {unexpected}"
            )
        loaded = {}
        for name, param in self._params.items():
            loaded[name] = as_float_array(state_dict[name], f"state_dict[{name!r}]")
            if loaded[name].shape != param.shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {loaded[name].shape}, but "
                    f"{self!r} expects {param.shape}; is it from another "
                    f"architecture or size?"
                )
        for name, value in loaded.items():
            np.copyto(self._params[name], value, casting="same_kind")
        self._forget_saved(LOADED)  # the saved forward used the old parameters

    def zero_grad(self) -> None:
        """Set every entry of ``grads`` to zero, in place (the arrays stay the same objects)."""
        for value in self.grads.values():
            value.fill(0)

    def train(self, mode: bool = True):
        """Training mode (default): forward saves what backward needs (and dropout is on)."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Eval mode: forward saves nothing for backward (and no dropout). Same as
        ``train(False)``."""
        return self.train(False)

    # ------------------------------------------------------------ checks

    def _check_array(
        self,
        value: object,
        name: str,
        shape: tuple | None = None,
        axes: tuple | None = None,
        unbatched: tuple | None = None,
    ) -> np.ndarray:
        """``value`` if it is a numpy array of the module's dtype and ``shape``, else an error
        naming ``name`` (`fusedrnn._checks.check_array`)."""
        return check_array(value, name, self.dtype, shape, axes, unbatched)

    # ------------------------------------------------------------ saved for backward

    def _keep_for_backward(self, saved: object) -> None:
        """After a forward: keep ``saved`` for backward, or, after an eval-mode forward of a
        module that saves nothing then, forget the last one (backward then says why)."""
        if self.training or self._saves_in_eval:
            self._saved = saved
        else:
            self._forget_saved(EVAL_FORWARD)

    def _forget_saved(self, reason: str) -> None:
        """Drop what forwards saved for backward; a backward then fails saying ``reason``."""
        self._saved = None
        self._no_saved_reason = reason

    def _require_saved(self):
        """What the last forward kept for backward, or a RuntimeError that says why there is
        none."""
        if self._saved is None:
            needs = "a forward" if self._saves_in_eval else "a training-mode forward"
            raise RuntimeError(
                f"{type(self).__name__}.backward needs {needs} first: {self._no_saved_reason}"
            )
        return self._saved
