"""What every layer and cell shares: parameters, state dicts, gradients, modes, argument checks.

`Module` is the one base class of `fusedrnn.LSTM` / `GRU` / `RNN` and of the three cells. The
subclasses say only what differs: which parameters they have (`_parameter_shapes`) and how a
forward / backward runs. Everything a user of either kind touches the same way is written here,
once.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import numpy as np

from .. import functional, reference
from .._parameters import ParameterModule, check_dtype, check_size

DTypeLike = type | str | np.dtype
# hx of an LSTM is a pair (h, c); of a GRU or RNN one array.
State = np.ndarray | tuple

_BACKENDS: dict[str, ModuleType] = {"fused": functional, "reference": reference}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks of hidden_size rows, PyTorch's order


def shape_text(shape: tuple, names: tuple | None = None) -> str:
    """A shape with ``*`` for any size, and the meaning of each axis when ``names`` are given:
    ``(2, *, 20) = (L*D, B, H)``."""
    def spell(items):
        return f"({', '.join(map(str, items))}{',' if len(items) == 1 else ''})"
    text = spell(["*" if n is None else n for n in shape])
    return f"{text} = {spell(names)}" if names else text


class Module(ParameterModule):
    """Base of the recurrent layers and cells.

    Holds the parameters (PyTorch's names, shapes and initialisation), their gradients, the
    training / eval mode, the dtype, the random generator and the backend, and checks every
    array a user hands in.

    Attributes
    ----------
    training : bool
        True after ``train()`` (the default), False after ``eval()``.
    grads : dict of str to ndarray
        The gradient of every parameter, keyed like ``state_dict()``, zeroed at construction and
        by ``zero_grad()``; every ``backward`` adds (``+=``) into these arrays.
    dtype : numpy.dtype
        float32 or float64: of the parameters, and required of every input.
    """

    _mode: ClassVar[str]  # "lstm", "gru" or "rnn": the kernel family
    _has_cell_state: ClassVar[bool] = False  # LSTM: hx is (h, c)
    # (attribute, default) of the constructor arguments ``repr`` shows when not the default
    _repr_fields: ClassVar[tuple] = ()

    def __init__(self, input_size: int, hidden_size: int, bias: bool, dtype: DTypeLike,
                 seed: int | None, backend: str, options: dict | None = None) -> None:
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.bias = bool(bias)
        self.dtype = check_dtype(dtype)
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be 'fused' or 'reference', got {backend!r}")
        self.backend = backend
        # the kernel options of the family: reset_after (GRU) or nonlinearity (RNN)
        self._options = dict(options or {})
        for name, value in self._options.items():
            setattr(self, name, value)
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        args = [str(self.input_size), str(self.hidden_size)]
        for name, default in self._repr_fields + (("bias", True),):
            value = getattr(self, name, default)  # a field only some subclasses have
            if value != default:
                args.append(f"{name}={value!r}")
        if self.dtype != np.float32:
            args.append(f"dtype=np.{self.dtype}")
        return f"{type(self).__name__}({', '.join(args)})"

    # ------------------------------------------------------------ parameters

    def _parameter_shapes(self) -> dict[str, tuple]:
        """Every parameter's name and shape, in PyTorch's order. Defined by each subclass."""
        raise NotImplementedError

    def _reset_parameters(self) -> None:
        """PyTorch's initialisation: every parameter uniform in +-1/sqrt(hidden_size).

        Drawn in float64 from the module's generator in name order and then cast, so modules of
        either dtype built with the same seed start from the same values.
        """
        bound = 1.0 / np.sqrt(self.hidden_size)
        self._set_parameters({name: self._rng.uniform(-bound, bound, shape)
                              for name, shape in self._parameter_shapes().items()})

    def _after_load(self) -> None:
        self._forget_saved()  # the saved forward used the old parameters

    def _forget_saved(self) -> None:
        """Drop whatever forwards saved for backward (subclasses hold it their way)."""

    @property
    def _backend(self) -> ModuleType:
        return _BACKENDS[self.backend]

    # ------------------------------------------------------------ argument checks

    def _check_array(self, value: object, name: str, shape: tuple,
                     axes: tuple | None = None) -> np.ndarray:
        """``value`` if it is a numpy array of the module's dtype and ``shape``, else an error.

        ``shape`` entries may be None (any size); ``axes`` names them for the message. Never
        casts: a float64 array given to a float32 module is a TypeError.
        """
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of dtype {self.dtype}, "
                            f"got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype} (the module's dtype), but has "
                            f"{value.dtype}; convert it with .astype(np.{self.dtype})")
        fits = value.ndim == len(shape) and all(
            want is None or want == got for want, got in zip(shape, value.shape))
        if not fits:
            raise ValueError(f"{name} must have shape {shape_text(shape, axes)}, "
                             f"but has {value.shape}")
        return value

    def _check_rows(self, rows: int) -> None:
        """Refuse, before anything is copied, a batch the fused kernels cannot take: T*B rows
        past the 2**31 - 1 of one BLAS argument. (The reference backend has no such limit.)"""
        if self.backend == "fused" and rows > functional.MAX_BLAS_DIM:
            raise ValueError(f"T*B (the rows of x) is {rows}, more than the 2**31 - 1 that the "
                             f"fused kernels take in one BLAS call; split the batch or the "
                             f"sequence")

    def _check_state(self, value: object, name: str, shape_h: tuple, shape_c: tuple,
                     axes_h: tuple, axes_c: tuple, optional_parts: bool = False) -> tuple:
        """``(h, c)`` from ``value``: h, or (h, c) for an LSTM; ``(None, None)`` for None.

        ``optional_parts``: either part of an LSTM pair may be None (gradients: zeros).
        """
        if value is None:
            return None, None
        if not self._has_cell_state:
            return self._check_array(value, name, shape_h, axes_h), None
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{name} of {type(self).__name__} must be a tuple (h, c), "
                            f"got {type(value).__name__}")
        h, c = value
        if not (optional_parts and h is None):
            h = self._check_array(h, f"{name}[0] (h)", shape_h, axes_h)
        if not (optional_parts and c is None):
            c = self._check_array(c, f"{name}[1] (c)", shape_c, axes_c)
        return h, c


def check_nonlinearity(nonlinearity: str) -> str:
    """``nonlinearity`` of an RNN or RNNCell: 'tanh' or 'relu'."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


