"""ONNX's recurrent-cell attributes beyond PyTorch's: ``activations`` (with ``activation_alpha`` /
``activation_beta``), ``clip`` and the LSTM's ``input_forget`` (docs/onnx.md).

`cell_options` checks them and returns a `CellOptions`, or None when they describe PyTorch's cell
(which then runs its own fused passes, bit for bit as before). The fused kernels take
``CellOptions.kernel_args()``; the NumPy reference applies the same functions through
`Activation.value` / `Activation.slope`. Each fact (the names, the kernel codes, the defaults)
is written here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._checks import check_choice

# ONNX's activation functions: name -> (default alpha, default beta), None where unused. The
# order is the kernels' `Activation` enum (csrc/recurrent_cell.h). The defaults are those of the
# ONNX operators of the same names, as the LSTM / GRU / RNN operators define them; Affine and
# ScaledTanh are no ONNX operators (any more), and take onnxruntime's 0 (docs/onnx.md).
_ACTIVATIONS: dict[str, tuple[float | None, float | None]] = {
    "Sigmoid": (None, None),
    "Tanh": (None, None),
    "Relu": (None, None),
    "Affine": (0.0, 0.0),
    "LeakyRelu": (0.01, None),
    "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (0.0, 0.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, None),
    "Softsign": (None, None),
    "Softplus": (None, None),
}
ACTIVATION_NAMES = tuple(_ACTIVATIONS)
_CANONICAL = {name.lower(): name for name in ACTIVATION_NAMES}

# Each cell's activation slots and PyTorch's functions in them: LSTM f (gates i, f, o), g (cell
# input), h (of the cell state); GRU f (r, z), g (n); RNN f.
DEFAULT_ACTIVATIONS = {
    "lstm": ("Sigmoid", "Tanh", "Tanh"),
    "gru": ("Sigmoid", "Tanh"),
    "rnn": ("Tanh",),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from .reference._common import sigmoid

    return sigmoid(x)


@dataclass(frozen=True)
class Activation:
    """One of ONNX's activation functions with its alpha and beta (0 where unused)."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    @property
    def code(self) -> int:
        """The kernels' `Activation` enum value."""
        return ACTIVATION_NAMES.index(self.name)

    def value(self, x: np.ndarray) -> np.ndarray:
        """``act(x)``, ONNX's definition."""
        a, b = x.dtype.type(self.alpha), x.dtype.type(self.beta)
        name = self.name
        if name == "Sigmoid":
            return _sigmoid(x)
        if name == "Tanh":
            return np.tanh(x)
        if name == "Relu":
            return np.maximum(x, 0)
        if name == "Affine":
            return a * x + b
        if name == "LeakyRelu":
            return np.where(x < 0, a * x, x)
        if name == "ThresholdedRelu":
            return np.where(x > a, x, 0).astype(x.dtype)
        if name == "ScaledTanh":
            return a * np.tanh(b * x)
        if name == "HardSigmoid":
            return np.clip(a * x + b, 0, 1)
        if name == "Elu":
            return np.where(x < 0, a * np.expm1(np.minimum(x, 0)), x)
        if name == "Softsign":
            return x / (1 + np.abs(x))
        return np.logaddexp(x, 0).astype(x.dtype)  # Softplus: log(1 + exp(x))

    def slope(self, x: np.ndarray) -> np.ndarray:
        """``d act / dx`` at ``x``."""
        a, b = x.dtype.type(self.alpha), x.dtype.type(self.beta)
        one, zero = x.dtype.type(1), x.dtype.type(0)
        name = self.name
        if name == "Sigmoid":
            s = _sigmoid(x)
            return s * (1 - s)
        if name == "Tanh":
            return 1 - np.tanh(x) ** 2
        if name == "Relu":
            return np.where(x > 0, one, zero)
        if name == "Affine":
            return np.full_like(x, a)
        if name == "LeakyRelu":
            return np.where(x < 0, a, one)
        if name == "ThresholdedRelu":
            return np.where(x > a, one, zero)
        if name == "ScaledTanh":
            return a * b * (1 - np.tanh(b * x) ** 2)
        if name == "HardSigmoid":
            v = a * x + b
            return np.where((v > 0) & (v < 1), a, zero)
        if name == "Elu":
            return np.where(x < 0, a * np.exp(np.minimum(x, 0)), one)
        if name == "Softsign":
            return 1 / (1 + np.abs(x)) ** 2
        return _sigmoid(x)  # Softplus


@dataclass(frozen=True)
class Gate:
    """A gate of a cell with options: ``act(clip(pre))`` and its slope in ``pre`` (zero where
    the clip cuts). ``clip`` 0: none."""

    act: Activation
    clip: float = 0.0

    def _clipped(self, pre: np.ndarray) -> np.ndarray:
        return np.clip(pre, -self.clip, self.clip) if self.clip > 0 else pre

    def value(self, pre: np.ndarray) -> np.ndarray:
        return self.act.value(self._clipped(pre))

    def slope(self, pre: np.ndarray) -> np.ndarray:
        slope = self.act.slope(self._clipped(pre))
        if self.clip > 0:
            slope = np.where(np.abs(pre) > self.clip, 0, slope).astype(pre.dtype)
        return slope


@dataclass(frozen=True)
class CellOptions:
    """ONNX's attributes of a recurrent cell, checked (see `cell_options`).

    Attributes
    ----------
    activations : one tuple of `Activation` per direction (the cell's slots, see
        `DEFAULT_ACTIVATIONS`)
    clip : float
        > 0: every gate pre-activation is clipped to [-clip, clip] before its activation (the
        gradient is zero where it cuts); 0: no clip.
    input_forget : bool
        LSTM: couple the input and forget gates, ``f = 1 - i``.
    """

    activations: tuple[tuple[Activation, ...], ...]
    clip: float = 0.0
    input_forget: bool = False

    def direction(self, d: int) -> CellOptions:
        """The options of direction ``d`` alone (its activations first and only)."""
        acts = self.activations[min(d, len(self.activations) - 1)]
        return CellOptions((acts,), self.clip, self.input_forget)

    def gates(self) -> tuple[Gate, ...]:
        """The gates of the first direction, one per activation slot."""
        return tuple(Gate(act, self.clip) for act in self.activations[0])

    def kernel_args(self) -> tuple:
        """What the bindings take (csrc/bindings/checks.h, parse_cell_options)."""
        return (
            float(self.clip),
            bool(self.input_forget),
            tuple(tuple((a.code, a.alpha, a.beta) for a in acts) for acts in self.activations),
        )


def _activation_list(
    mode: str, activations: Sequence[str], alphas: Sequence[float], betas: Sequence[float], D: int
) -> tuple[tuple[Activation, ...], ...]:
    """ONNX's ``activations`` list (one name per slot, per direction; or one direction's for
    all) with ``activation_alpha`` / ``_beta`` consumed in order by the functions that use them."""
    slots = len(DEFAULT_ACTIVATIONS[mode])
    if isinstance(activations, str) or len(activations) not in (slots, slots * D):
        raise ValueError(
            f"activations of a {mode} must list {slots} function(s) per direction "
            f"({slots * D} for {D} directions, or {slots} for all), got {activations!r}"
        )
    alphas, betas = list(alphas), list(betas)
    out = []
    for name in activations:
        canonical = _CANONICAL.get(str(name).lower())
        if canonical is None:
            check_choice(name, "activations", ACTIVATION_NAMES)
        default_alpha, default_beta = _ACTIVATIONS[canonical]
        alpha = (alphas.pop(0) if alphas else default_alpha) if default_alpha is not None else 0.0
        beta = (betas.pop(0) if betas else default_beta) if default_beta is not None else 0.0
        out.append(Activation(canonical, float(alpha), float(beta)))
    per_direction = [tuple(out[k : k + slots]) for k in range(0, len(out), slots)]
    return tuple(per_direction) * (D if len(per_direction) == 1 else 1)


def cell_options(
    mode: str,
    num_directions: int = 1,
    *,
    activations: Sequence[str] | None = None,
    activation_alpha: Sequence[float] = (),
    activation_beta: Sequence[float] = (),
    clip: float | None = None,
    input_forget: bool = False,
    peephole: bool = False,
    nonlinearity: str = "tanh",
) -> CellOptions | None:
    """Check ONNX's attributes of a ``mode`` cell; None if they describe PyTorch's cell.

    Parameters
    ----------
    mode : 'lstm', 'gru' or 'rnn'
    num_directions : 1 or 2
    activations : ONNX's names (case-insensitive), one per slot of the cell (LSTM f, g, h; GRU
        f, g; RNN f), for every direction, or for each direction in turn; None: PyTorch's
    activation_alpha, activation_beta : consumed in order by the functions that take them;
        missing ones take ONNX's defaults
    clip : float > 0, or None
    input_forget : bool (LSTM only)
    peephole : bool (LSTM only): needs the options' pass, so it returns options even when all
        else is PyTorch's
    nonlinearity : an RNN's PyTorch nonlinearity ('tanh' or 'relu'), the default of its slot
    """
    if clip is not None and not (float(clip) > 0):
        raise ValueError(f"clip must be a number > 0 or None, got {clip!r}")
    if input_forget and mode != "lstm":
        raise ValueError(f"input_forget applies to an LSTM only, not to a {mode}")
    if peephole and mode != "lstm":
        raise ValueError(f"peephole applies to an LSTM only, not to a {mode}")
    default = DEFAULT_ACTIVATIONS[mode]
    if mode == "rnn":
        default = ("Relu" if nonlinearity == "relu" else "Tanh",)
    if activations is None:
        if activation_alpha or activation_beta:
            raise ValueError("activation_alpha / activation_beta need activations")
        activations = default
    acts = _activation_list(
        mode, activations, activation_alpha, activation_beta, int(num_directions)
    )
    is_default = all(tuple(a.name for a in d) == default for d in acts) and all(
        a.alpha == 0 and a.beta == 0 for d in acts for a in d
    )
    if is_default and clip is None and not input_forget and not peephole:
        return None
    return CellOptions(acts, float(clip or 0.0), bool(input_forget))
