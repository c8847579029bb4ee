"""Argument checks shared by the fused functions, the NumPy reference and the layers.

Each check is written once, here, with the message a user sees: it names the argument, says what
was expected and what came, and never casts. A public function checks each of its arguments once
with these; the layers check only what is theirs (their dtype, their sizes, with the meaning of
every axis) and leave the rest to the function they call.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping

import numpy as np

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# One BLAS argument is an LP64 int: the kernels refuse T*B, input_size and gate widths above it
# (the binding checks again; checking first keeps Python from copying or sorting a huge view).
MAX_BLAS_DIM = 2**31 - 1


def _type_name(value: object) -> str:
    return type(value).__name__


# ---------------------------------------------------------------- scalars


def check_dtype(dtype: object, name: str = "dtype", default: object = np.float32) -> np.dtype:
    """A module's dtype: float32 or float64, else TypeError naming ``name``.

    Accepts numpy dtypes and scalar types, their names ('float32', 'f8', 'double', ...) and
    PyTorch's ``torch.float32`` / ``torch.float64`` (read by name: torch is not imported);
    None means ``default``.
    """
    if dtype is None:
        dtype = default
    resolved = None
    if type(dtype).__module__ == "torch":  # torch.float32 is a torch.dtype, not a numpy one
        resolved = (
            np.dtype(str(dtype).removeprefix("torch.")) if str(dtype) in _TORCH_DTYPES else None
        )
    elif isinstance(dtype, (str, type, np.dtype)):
        try:
            resolved = np.dtype(dtype)
        except TypeError:
            resolved = None
    if resolved is None or resolved not in DTYPES:  # numpy: dtype('float64') == None is True
        raise TypeError(
            f"{name} must be float32 or float64 (a numpy dtype, its name, or torch.float32 / "
            f"torch.float64), got {dtype!r}"
        )
    return resolved


_TORCH_DTYPES = ("torch.float32", "torch.float64")


def check_size(value: object, name: str, minimum: int | None = 1) -> int:
    """``value`` as an int >= ``minimum`` (None: any); bools and floats refused.

    Any integer type is accepted (numpy's too); TypeError / ValueError naming ``name``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        size = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_type_name(value)}") from None
    if minimum is not None and size < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {size}")
    return size


def check_choice(value: object, name: str, choices: tuple) -> str:
    """``value`` if it is one of the strings ``choices``: ``mode must be 'lstm', 'gru' or
    'rnn', got 'LSTM'`` otherwise."""
    if not isinstance(value, str) or value not in choices:
        spelled = f"{', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}"
        raise ValueError(f"{name} must be {spelled}, got {value!r}")
    return value


def check_flag(value: object, name: str) -> bool:
    """A bool (Python or numpy); anything else, e.g. a dropout probability passed positionally
    where ``is_causal`` goes, is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)} {value!r}")
    return bool(value)


def check_frozen(frozen: object, names) -> frozenset:
    """The parameter names in ``frozen`` (a collection of strings, each one of ``names``): the
    parameters whose gradients a backward is not to compute. A single string, a name that is not
    a parameter, or anything but a collection of strings is an error naming what came."""
    if type(frozen) in (tuple, list, frozenset, set) and not frozen:
        return frozenset()  # (the usual case, on every step of a cell loop: no work)
    if isinstance(frozen, (str, bytes)) or not hasattr(frozen, "__iter__"):
        raise TypeError(
            f"frozen must be a collection of parameter names, got {_type_name(frozen)} {frozen!r}"
        )
    out = frozenset(frozen)
    unknown = sorted(repr(n) for n in out if not isinstance(n, str) or n not in names)
    if unknown:
        raise ValueError(
            f"frozen must name parameters of this call ({', '.join(names)}); "
            f"got {', '.join(unknown)}"
        )
    return out


def stack_grads_or_zeros(grads: object, params, frozen: frozenset) -> dict:
    """The gradient dict a stack's backward adds into: ``grads``, keyed like ``params`` (a
    frozen parameter's key may be there or not; its array is not touched), or fresh zeros for
    every parameter not frozen. The shapes and dtypes are the caller's to check."""
    wanted = [name for name in params if name not in frozen]
    if grads is None:
        return {name: np.zeros_like(params[name]) for name in wanted}
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {_type_name(grads)}")
    missing, unexpected = sorted(set(wanted) - set(grads)), sorted(set(grads) - set(params))
    if missing or unexpected:
        left_out = " (a frozen one may be left out)" if frozen else ""
        raise ValueError(
            f"grads must have exactly the keys of params{left_out}; missing {missing}, "
            f"unexpected {unexpected}"
        )
    nones = [name for name in wanted if grads[name] is None]
    if nones:
        raise TypeError(
            f"grads[{nones[0]!r}] must be an array to add into, got None (a gradient that is "
            f"not wanted is named in frozen)"
        )
    return grads


def check_probability(value: object, name: str) -> float:
    """A real number in [0, 1] (a dropout probability), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {_type_name(value)}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def check_eps(value: object, name: str = "eps") -> float:
    """A finite real number >= 0 (added to a variance), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {_type_name(value)}")
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_normalized_shape(value: object) -> tuple:
    """``normalized_shape`` of a layer norm (torch.nn.LayerNorm's): an int or a non-empty
    sequence of ints >= 1, as a tuple."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(
            f"normalized_shape must be an int or a tuple of ints, got {_type_name(value)}"
        )
    if not value:
        raise ValueError("normalized_shape must have at least one axis, got ()")
    return tuple(check_size(v, f"normalized_shape[{k}]") for k, v in enumerate(value))


def check_seed(value: object, name: str = "seed") -> int:
    """An integer seed in [0, 2**64)."""
    seed = check_size(value, name, minimum=None)
    if not 0 <= seed < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return seed


# ---------------------------------------------------------------- arrays


def require_array(value: object, name: str) -> np.ndarray:
    """``value`` if it is a numpy array, else a TypeError naming ``name``."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {_type_name(value)}")
    return value


def shape_text(shape: tuple, axes: tuple | None = None) -> str:
    """A shape with ``*`` for any size (None) and ``...`` for any leading axes (Ellipsis), and
    the meaning of each axis when ``axes`` are given: ``(2, *, 20) = (L*D, B, H)``."""

    def spell(items):
        words = ["..." if n is Ellipsis else "*" if n is None else str(n) for n in items]
        return f"({', '.join(words)}{',' if len(items) == 1 else ''})"

    return f"{spell(shape)} = {spell(axes)}" if axes else spell(shape)


def fits_shape(value: np.ndarray, shape: tuple) -> bool:
    """Whether ``value`` has ``shape`` (None: any size; a leading Ellipsis: any leading axes)."""
    actual = value.shape
    if shape and shape[0] is Ellipsis:
        shape = shape[1:]
        if len(actual) < len(shape):
            return False
        actual = actual[len(actual) - len(shape) :]
    elif len(actual) != len(shape):
        return False
    # a loop, not all() over a generator (SIM110): every module call checks several arrays
    for want, got in zip(shape, actual):  # noqa: SIM110
        if want is not None and want != got:
            return False
    return True


def check_float_array(value: object, name: str) -> np.ndarray:
    """``value`` if it is a numpy array of float32 or float64 (for a module without a dtype of
    its own, which takes its input's); TypeError naming ``name`` otherwise. Never casts."""
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of float32 or float64, got {_type_name(value)}"
        )
    if value.dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, but has {value.dtype}")
    return value


def check_axis(axis: object, name: str, ndim: int) -> int:
    """``axis`` as a non-negative axis of an array with ``ndim`` axes (negative counts from the
    end, as numpy's and PyTorch's ``dim``)."""
    axis = check_size(axis, name, minimum=None)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name} must be in [-{ndim}, {ndim}) for an input of {ndim} axes, got {axis}"
        )
    return axis % ndim


def check_array(
    value: object,
    name: str,
    dtype: np.dtype,
    shape: tuple | None = None,
    axes: tuple | None = None,
    unbatched: tuple | None = None,
) -> np.ndarray:
    """``value`` itself if it is a numpy array of ``dtype`` and ``shape``, else an error naming
    ``name``. Never casts: a float64 array given to a float32 layer is a TypeError.

    Parameters
    ----------
    dtype : the layer's dtype, the only one accepted
    shape : tuple of int or None, optional
        None entries take any size; a leading ``...`` any number of leading axes.
    axes : tuple of str, optional
        The meaning of each axis, for the message: ``(*, *, 5) = (T, B, input_size)``.
    unbatched : (shape, axes) or (shape, axes, word), optional
        The other form the argument may take, with one axis fewer (called "unbatched", or
        ``word``, in the message); an array with the number of axes of neither form is told
        both.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of dtype {dtype}, got {_type_name(value)}")
    if value.dtype != dtype:
        raise TypeError(
            f"{name} must have dtype {dtype} (the layer's dtype), but has "
            f"{value.dtype}; convert it with .astype(np.{dtype})"
        )
    if shape is None:
        return value
    if unbatched is not None and value.ndim == len(unbatched[0]):
        shape, axes, unbatched = unbatched[0], unbatched[1], None
    if not fits_shape(value, shape):
        expected = shape_text(shape, axes)
        if unbatched is not None and value.ndim != len(shape):  # neither form: tell both
            other_shape, other_axes, word = (*unbatched, "unbatched")[:3]
            expected += f" or {word} {shape_text(other_shape, other_axes)}"
        raise ValueError(f"{name} must have shape {expected}, but has {value.shape}")
    return value


def check_rows(rows: int) -> None:
    """Refuse, before anything is copied or sorted, a batch the fused kernels cannot take: T*B
    rows past the 2**31 - 1 of one BLAS argument. (The reference has no such limit.)"""
    if rows > MAX_BLAS_DIM:
        raise ValueError(
            f"T*B (the rows of x) is {rows}, more than the 2**31 - 1 that the "
            f"fused kernels take in one BLAS call; split the batch or the sequence"
        )


def check_lengths(lengths: object, T: int, B: int) -> np.ndarray | None:
    """Variable sequence lengths: None, or a fresh int64 array (B,) with every entry in 1..T.

    Any integer form is accepted (lists, numpy arrays of any integer dtype); bools, floats (even
    ``3.0``) and anything else that is not integers is a TypeError, a wrong count or a length
    outside 1..T a ValueError naming the first one.
    """
    if lengths is None:
        return None
    try:
        array = np.asarray(lengths)
    except (TypeError, ValueError, RuntimeError) as error:  # RuntimeError: a tensor needing grad
        raise TypeError(f"lengths must be a sequence of integers: {error}") from None
    # (numpy reads an empty list as float64: it is the lengths of an empty batch all the same)
    if array.dtype.kind not in "iu" and not (B == 0 and array.shape == (0,)):
        raise TypeError(f"lengths must hold integers, but has dtype {array.dtype}")
    if array.shape != (B,):
        raise ValueError(
            f"lengths must have shape (B,) = ({B},), one per batch item, but has {array.shape}"
        )
    bad = np.flatnonzero((array < 1) | (array > T))
    if bad.size:
        raise ValueError(
            f"lengths must be in 1..T = 1..{T}, but lengths[{bad[0]}] = {array[bad[0]]}"
        )
    return array.astype(np.int64)


def check_ignore_index(ignore_index: object) -> int:
    """``ignore_index`` of a cross-entropy: any integer (numpy ones too), never a bool or float."""
    return check_size(ignore_index, "ignore_index", minimum=None)
