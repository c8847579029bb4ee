"""16-bit weights for inference (``weights_dtype``): the rounding, and the packing the kernels read.

A float32 layer with ``weights_dtype="float16"`` or ``"bfloat16"`` keeps its float32 parameters
(they stay the source of truth: state_dict, training), and in an eval-mode forward multiplies
with a 16-bit copy of its weight matrices (biases stay float32), packed once into the panels of
the step GEMM (``_core.pack_half_panels``). Every product and sum is float32: the only error is
the rounding of each weight to 16 bits, which `round_weights` reproduces in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from ._spec import GATES, STACK_ROLES, num_directions, stack_role_names

WEIGHTS_DTYPES = ("float16", "bfloat16")
# The parameter roles held in 16 bits; the biases are added in float32.
HALF_ROLES = ("weight_ih", "weight_hh", "weight_hr")


def check_weights_dtype(value: object, dtype: DTypeLike = np.float32) -> str | None:
    """``weights_dtype`` as 'float16', 'bfloat16' or None (the parameters' own float32).

    ``dtype`` is the layer's: 16-bit weights are for float32 layers only.
    """
    if value is None:
        return None
    if value is np.float16 or (isinstance(value, np.dtype) and value == np.float16):
        value = "float16"
    if not isinstance(value, str):
        raise TypeError(
            f"weights_dtype must be None, 'float16' or 'bfloat16', got {type(value).__name__}"
        )
    if value not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be None, 'float16' or 'bfloat16', got {value!r}")
    if np.dtype(dtype) != np.float32:
        raise TypeError(
            f"weights_dtype={value!r} needs a float32 layer (16-bit weights, float32 "
            f"arithmetic), but the layer's dtype is {np.dtype(dtype)}"
        )
    return value


# The largest finite float16; finite weights beyond it would become infinite.
FLOAT16_MAX = float(np.finfo(np.float16).max)


def weight_bits(w: np.ndarray, weights_dtype: str, name: str = "w") -> np.ndarray:
    """The bits (uint16) of float32 ``w`` rounded to ``weights_dtype``, to nearest, ties to even.

    float16: numpy's conversion; a finite weight past float16's range (65504) is a ValueError
    naming ``name``. bfloat16: the top 16 bits of the float32 after adding half a unit of the
    last kept bit (plus one when that bit is odd: ties to even); NaN stays a quiet NaN.
    """
    w = np.asarray(w, np.float32)
    if weights_dtype == "float16":
        finite = np.abs(w[np.isfinite(w)])
        if finite.size and finite.max() > FLOAT16_MAX:
            raise ValueError(
                f"weights_dtype='float16' cannot hold {name}: its largest magnitude "
                f"{finite.max():.6g} is past float16's {FLOAT16_MAX:g} (bfloat16 has float32's "
                f"range)"
            )
        return w.astype(np.float16).view(np.uint16)
    bits = w.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(w), ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def bits_to_float32(bits: np.ndarray, weights_dtype: str) -> np.ndarray:
    """The float32 values of 16-bit ``bits`` of ``weights_dtype`` (exact)."""
    if weights_dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def round_weights(w: np.ndarray, weights_dtype: str, name: str = "w") -> np.ndarray:
    """float32 ``w`` rounded to the nearest ``weights_dtype`` number, as a float32 array: what
    the kernels multiply with."""
    return bits_to_float32(weight_bits(w, weights_dtype, name), weights_dtype)


def rounded_params(params: Mapping[str, np.ndarray], weights_dtype: str | None) -> dict:
    """``params`` with every weight matrix rounded to ``weights_dtype`` (biases as they are)."""
    return {
        name: (
            round_weights(value, weights_dtype, name)
            if weights_dtype and name.startswith(HALF_ROLES)
            else value
        )
        for name, value in params.items()
    }


def inference_weights_dtype(
    weights_dtype: object, half_weights: object, training: bool, dtype: np.dtype
) -> str | None:
    """The 16-bit format a ``stack_forward`` call multiplies with, from its ``weights_dtype``
    and ``half_weights`` arguments (either names it; both must agree), or None for the float
    weights. Inference only; ``dtype`` is x's."""
    weights_dtype = check_weights_dtype(weights_dtype, dtype)
    if half_weights is not None:
        if not isinstance(half_weights, HalfWeights):
            raise TypeError(
                f"half_weights must be a HalfWeights from pack_half_weights, got "
                f"{type(half_weights).__name__}"
            )
        if weights_dtype not in (None, half_weights.weights_dtype):
            raise ValueError(
                f"half_weights hold {half_weights.weights_dtype} weights, but weights_dtype is "
                f"{weights_dtype!r}"
            )
        weights_dtype = check_weights_dtype(half_weights.weights_dtype, dtype)
    if weights_dtype is not None and training:
        raise ValueError(
            f"weights_dtype={weights_dtype!r} is for inference (16-bit weights have no "
            f"gradient): pass training=False"
        )
    return weights_dtype


class HalfWeights(NamedTuple):
    """A layer stack's weight matrices in 16 bits, packed for the active instruction set: what
    ``functional.stack_forward(..., half_weights=...)`` multiplies with."""

    weights_dtype: str
    panel_width: int  # the step GEMM's panel columns they were packed for
    amx: bool  # whether packed for AMX's tiles (bfloat16, _core.amx_active() at the packing)
    # per layer and direction: (w_ih, w_hh, w_hr in the FMA panels, then the same three in AMX's
    # tiles), packed uint16 arrays; each matrix in one of the two (AMX's where packed for it,
    # unless it has an infinite weight), None in the other (w_hr: both None without a projection)
    layers: list


def amx_packing(weights_dtype: str) -> bool:
    """Whether weights of ``weights_dtype`` packed now are packed for AMX's tiles: with
    bfloat16 weights, every product (the input projection, the steps) runs on them where the
    CPU has them (``_core.amx_active()``), every product exact and the sums float32, as on the
    FMA panels (csrc/common/amx.h)."""
    from . import _core

    return weights_dtype == "bfloat16" and _core.amx_active()


def packed_for_active_isa(half_weights: HalfWeights | None) -> bool:
    """Whether ``half_weights`` exist and fit the instruction set the kernels now run
    (``fusedrnn.select_isa`` may change its panel width, and whether AMX is used)."""
    from . import _core

    return (
        half_weights is not None
        and half_weights.panel_width == _core.step_panel_width()
        and half_weights.amx == amx_packing(half_weights.weights_dtype)
    )


def pack_half_weights(
    mode: str,
    params: Mapping[str, np.ndarray],
    num_layers: int,
    bidirectional: bool,
    weights_dtype: str,
) -> HalfWeights:
    """Round a stack's weight matrices to ``weights_dtype`` and pack them once.

    ``params`` as for ``stack_forward`` (PyTorch's names, float32); their shapes are checked
    when the packing is used.
    """
    from . import _core  # (the reference backend runs without the extension)

    weights_dtype = check_weights_dtype(weights_dtype)
    if weights_dtype is None:
        raise ValueError("pack_half_weights needs weights_dtype 'float16' or 'bfloat16', got None")
    blocks = {"weight_ih": GATES[mode], "weight_hh": GATES[mode], "weight_hr": 1}

    amx = amx_packing(weights_dtype)

    def packed(named: dict) -> tuple:
        bits = {
            role: weight_bits(np.asarray(params[named[role]]), weights_dtype, named[role])
            for role in HALF_ROLES
            if named[role] in params  # (weight_hr without a projection)
        }
        # AMX's tiles where they can take the matrix (an infinite weight times x's zero parts would
        # give NaN), the FMA panels otherwise
        tiles = [
            _core.pack_amx_panels(bits[role], blocks[role])
            if amx and role in bits and np.all(np.isfinite(bits_to_float32(bits[role], "bfloat16")))
            else None
            for role in HALF_ROLES
        ]
        panels = [
            _core.pack_half_panels(bits[role], blocks[role], weights_dtype)
            if role in bits and tile is None
            else None
            for role, tile in zip(HALF_ROLES, tiles)
        ]
        return (*panels, *tiles)

    layers = [
        packed(dict(zip(STACK_ROLES, names)))
        for names in stack_role_names(num_layers, num_directions(bidirectional))
    ]
    return HalfWeights(weights_dtype, _core.step_panel_width(), amx, layers)
