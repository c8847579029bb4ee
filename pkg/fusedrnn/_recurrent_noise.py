"""Zoneout (Krueger et al. 2016) and variational recurrent dropout (Gal and Ghahramani 2016) of
the LSTM and GRU: the checked options (`recurrent_noise`), the masks the kernels draw
(csrc/recurrent_noise.h), drawn here by the same counter-based formula (`_counter_rng`), and the
two operations on the states the NumPy reference applies (docs/layers.md).

- Zoneout: ``state_t = a*state_{t-1} + (1-a)*candidate_t`` for h (LSTM and GRU, ``zoneout``)
  and the LSTM's c (``zoneout_cell``). Training: ``a`` is 1 (the unit keeps its previous value)
  with probability p, drawn per (step, row, unit); eval: ``a = p``, the expectation.
- Recurrent dropout: the recurrent GEMM reads ``h_{t-1} * keep / (1 - p)``, ``keep`` drawn once
  per (row, unit), the same at every step of the sequence; training only.

Each layer and direction (``stream = layer * D + direction``) and each mask has a stream of its
own: seed ``(seed + (3*stream + mask + 1) * 0x9E3779B97F4A7C15) mod 2**64``; a zoneout row is
``step * 2**32 + row``, a dropout row ``row``; the column is the unit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import numpy as np

from ._checks import check_flag, check_probability, check_seed, check_size
from ._counter_rng import dropout_keep

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


class NoiseMask(enum.IntEnum):
    """The masks, in csrc/recurrent_noise.h's order."""

    RECURRENT_DROPOUT = 0
    ZONEOUT_H = 1
    ZONEOUT_C = 2


@dataclass(frozen=True)
class RecurrentNoise:
    """Zoneout and recurrent dropout of one call (see the module docstring).

    Attributes
    ----------
    zoneout : float in [0, 1): of h (LSTM and GRU)
    zoneout_cell : float in [0, 1): of the LSTM's c
    recurrent_dropout : float in [0, 1)
    seed : int in [0, 2**64): of every mask of the call
    training : bool
        True: masks drawn; False: zoneout's expectation and no dropout.
    stream : int
        The layer and direction, ``layer * D + direction`` (the reference stack sets it).
    first_step : int in [0, 2**32)
        The step of the sequence where the call starts (zoneout's masks are drawn per step of
        the sequence): a sequence run chunk by chunk with one seed keeps its recurrent dropout
        mask and draws zoneout's masks as a whole-sequence call would.
    rows : the row of the sequence of each row of the call (None: 0..B-1); the reference's
        truncated backpropagation sets it.
    """

    zoneout: float = 0.0
    zoneout_cell: float = 0.0
    recurrent_dropout: float = 0.0
    seed: int = 0
    training: bool = True
    stream: int = 0
    first_step: int = 0
    rows: tuple | None = None

    def for_stream(self, stream: int) -> RecurrentNoise:
        """The same options for layer and direction ``stream``."""
        return replace(self, stream=int(stream))

    def for_span(self, first_step: int, rows: np.ndarray) -> RecurrentNoise:
        """The same masks for a call over steps from ``first_step`` of the rows ``rows`` (the
        reference's truncated backpropagation re-runs spans of a sequence this way)."""
        rows = tuple(int(r) for r in rows)
        return replace(self, first_step=self.first_step + int(first_step), rows=rows)

    def kernel_args(self, row_ids: np.ndarray | None = None) -> tuple:
        """What the bindings take (csrc/bindings/stack.cpp, set_noise); ``row_ids`` (B,) int64:
        the caller's row of each row the kernel sees (the batch sorted by length)."""
        return (
            self.zoneout,
            self.zoneout_cell,
            self.recurrent_dropout,
            self.seed,
            self.training,
            self.first_step,
            row_ids,
        )

    # ---------------------------------------------------------------- the draws

    def _keep(self, mask: NoiseMask, rows: np.ndarray, H: int, p: float) -> np.ndarray:
        stream_seed = (self.seed + (3 * self.stream + int(mask) + 1) * _GOLDEN) & _MASK64
        return dropout_keep(stream_seed, rows, H, p)

    def _zoneout_p(self, mask: NoiseMask) -> float:
        return self.zoneout_cell if mask == NoiseMask.ZONEOUT_C else self.zoneout

    def _row_ids(self, B: int) -> np.ndarray:
        return (
            np.arange(B, dtype=np.uint64)
            if self.rows is None
            else np.array(self.rows, dtype=np.uint64)
        )

    def _zoned(self, mask: NoiseMask, step: int, B: int, H: int) -> np.ndarray:
        """(B, H) bool: where the unit keeps its previous value at ``step`` (training)."""
        counter = np.uint64(self.first_step + step) << np.uint64(32)
        return ~self._keep(mask, counter | self._row_ids(B), H, self._zoneout_p(mask))

    def zone(self, mask: NoiseMask, step: int, prev: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """``a*prev + (1-a)*cand``, the state after zoneout at ``step`` (prev, cand (B, H))."""
        p = self._zoneout_p(mask)
        if p == 0:
            return cand
        if self.training:
            return np.where(self._zoned(mask, step, *cand.shape), prev, cand)
        return p * prev + (1 - p) * cand

    def zone_gradient(self, mask: NoiseMask, step: int, grad: np.ndarray) -> tuple:
        """forward: state = a*prev + (1-a)*cand  ->  ``(d_cand, d_prev) = ((1-a)*g, a*g)``."""
        p = self._zoneout_p(mask)
        if p == 0:
            return grad, np.zeros_like(grad)
        if self.training:
            zoned = self._zoned(mask, step, *grad.shape)
            return np.where(zoned, 0, grad).astype(grad.dtype), np.where(zoned, grad, 0).astype(
                grad.dtype
            )
        return (1 - p) * grad, p * grad

    def dropout_scale(self, B: int, H: int, dtype: np.dtype) -> np.ndarray | None:
        """(B, H): ``keep / (1 - p)`` of the recurrent dropout, or None when it does nothing."""
        if not self.training or self.recurrent_dropout == 0:
            return None
        keep = self._keep(NoiseMask.RECURRENT_DROPOUT, self._row_ids(B), H, self.recurrent_dropout)
        kept = np.dtype(dtype).type(1.0 / (1.0 - self.recurrent_dropout))
        return np.where(keep, kept, 0).astype(dtype)


def _check_rate(value: object, name: str) -> float:
    p = check_probability(value, name)
    if p >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return p


def recurrent_noise(
    mode: str,
    *,
    zoneout: float = 0.0,
    zoneout_cell: float = 0.0,
    recurrent_dropout: float = 0.0,
    seed: int = 0,
    training: bool = True,
    first_step: int = 0,
    proj_size: int = 0,
    reset_after: bool = True,
) -> RecurrentNoise | None:
    """Check zoneout and recurrent dropout of a ``mode`` stack; None if they do nothing (all
    zero, or in eval mode recurrent dropout alone).

    Parameters
    ----------
    mode : 'lstm' or 'gru' ('rnn' takes neither)
    zoneout : float in [0, 1), of h
    zoneout_cell : float in [0, 1), of the LSTM's c
    recurrent_dropout : float in [0, 1)
    seed : int in [0, 2**64)
    training : bool (masks drawn) or eval (zoneout's expectation, no dropout)
    first_step : int in [0, 2**32), the step of the sequence where the call starts (see
        `RecurrentNoise`)
    proj_size, reset_after : the stack's; neither option takes a projection, and recurrent
        dropout takes PyTorch's GRU (reset_after) only
    """
    zoneout = _check_rate(zoneout, "zoneout")
    zoneout_cell = _check_rate(zoneout_cell, "zoneout_cell")
    recurrent_dropout = _check_rate(recurrent_dropout, "recurrent_dropout")
    seed = check_seed(seed)
    training = check_flag(training, "training")
    first_step = check_size(first_step, "first_step", minimum=0)
    if first_step >= 2**32:
        raise ValueError(f"first_step must be < 2**32, got {first_step}")
    if zoneout == zoneout_cell == recurrent_dropout == 0:
        return None
    if mode == "rnn":
        raise ValueError("zoneout and recurrent_dropout apply to an LSTM or a GRU, not an RNN")
    if zoneout_cell and mode != "lstm":
        raise ValueError(f"zoneout_cell applies to an LSTM's cell state only, not to a {mode}")
    if proj_size:
        raise ValueError(
            f"zoneout and recurrent_dropout need proj_size = 0, got proj_size={proj_size}"
        )
    if recurrent_dropout and not reset_after:
        raise ValueError("recurrent_dropout needs reset_after=True (PyTorch's GRU)")
    if not training and zoneout == zoneout_cell == 0:
        return None  # in eval mode recurrent dropout does nothing
    return RecurrentNoise(
        zoneout, zoneout_cell, recurrent_dropout, seed, training, first_step=first_step
    )
