"""The counter-based random draw of every dropout mask (attention's dropout, the recurrent cells'
zoneout and variational dropout), the NumPy twin of csrc/common/counter_rng.h.

Element ``(row, column)`` is kept iff ``lowbias32(row_key ^ (column * 0x9E3779B9)) >= round(p *
2**32)`` with ``row_key = lowbias32(lowbias32(lo(row) ^ lo(seed)) ^ hi(row) ^
lowbias32(hi(seed)))``, in uint32 arithmetic: a decision is a function of (seed, row, column), so
backward redraws what forward drew and no mask is stored.
"""

from __future__ import annotations

import numpy as np

_U32 = np.uint32
_MASK64 = (1 << 64) - 1


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """Chris Wellons' 32-bit integer hash, in uint32 arithmetic (wrapping)."""
    x = x.astype(_U32)
    x ^= x >> _U32(16)
    x *= _U32(0x7FEB352D)
    x ^= x >> _U32(15)
    x *= _U32(0x846CA68B)
    x ^= x >> _U32(16)
    return x


def dropout_keep(seed: int, rows: np.ndarray, S: int, dropout_p: float) -> np.ndarray:
    """The keep decisions of rows ``rows`` (any shape, integers < 2**64) over columns
    ``0..S-1``: a boolean array ``rows.shape + (S,)``, True with probability ``1 - dropout_p``."""
    rows = np.asarray(rows, dtype=np.uint64)
    seed = int(seed) & _MASK64
    lo = (rows & np.uint64(0xFFFFFFFF)).astype(_U32)
    hi = (rows >> np.uint64(32)).astype(_U32)
    seed_lo = _U32(seed & 0xFFFFFFFF)
    seed_hi = _lowbias32(np.array(seed >> 32, dtype=_U32))
    key = _lowbias32(_lowbias32(lo ^ seed_lo) ^ hi ^ seed_hi)
    cols = np.arange(S, dtype=_U32) * _U32(0x9E3779B9)
    h = _lowbias32(key[..., None] ^ cols)
    if dropout_p <= 0:
        return np.ones(h.shape, dtype=bool)
    if dropout_p >= 1:
        return np.zeros(h.shape, dtype=bool)
    threshold = min(int(dropout_p * 2.0**32 + 0.5), 2**32 - 1)
    return h.astype(np.uint64) >= np.uint64(threshold)
