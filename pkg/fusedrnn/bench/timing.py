"""How a call is timed (`measure`) and on how many threads (`thread_limit`).

Shared machines are noisy: a measurement is the median of several calls after a warm-up, fast
calls go on for a minimum time, slow ones stop at a budget, and a pause lets the thread pools of
the library that ran before go idle.
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .. import _config
from .._config import bundled_openblas

MIN_TIMED_SHARE = 0.1
"""The named sweeps time each measurement's calls for at least this share of their budget in
all (0.1 s in the default sweep), however fast each call is (`measure`'s ``min_seconds``)."""
SETTLE_SECONDS = 0.15
"""Pause before timing the fused kernels and PyTorch: the reference ran just before, and OpenBLAS
threads spin for about 0.1 s after it (`measure`). The reference itself follows the fused calls,
whose OpenMP threads spin for well under a millisecond, and is timed without a pause."""
REFERENCE_BUDGET_SHARE = 0.5
"""The share of the sweep's budget the NumPy reference's timing gets: it is the slow baseline
(10-1500 ms a call), and its big cases took half the default sweep's time at the full budget."""


@dataclass(frozen=True)
class Timing:
    """Median seconds of ``calls`` timed calls, and the fastest of them (``minimum``): their
    ratio is the measurement's spread, which a quiet machine keeps near 1."""

    seconds: float
    calls: int
    minimum: float


def measure(
    fn: Callable[[], object],
    repeats: int,
    budget: float,
    settle: float = 0.0,
    min_seconds: float = 0.0,
    warm_up: float | None = None,
) -> Timing:
    """Time ``fn``: a pause and one warm-up call (unless ``warm_up`` gives one already made), then
    the median of ``repeats`` calls or more (and the fastest of them).

    Fast calls go on past ``repeats`` until they have spent ``min_seconds``: on a shared machine a
    slow spell of some milliseconds would otherwise cover all 7 calls of a 1 ms case and move its
    median by 20% or more (seen in the LSTM rows at B=16), while a hundred calls outlast it.

    The pause of ``settle`` seconds lets the thread pools of whatever ran before go idle: OpenBLAS
    and OpenMP worker threads keep spinning for a while after their last call, and on a machine
    with few cores they would slow down the first calls of the next library by up to 100x.
    Timed calls stop early once they have spent ``budget`` seconds, and a warm-up slower than the
    budget is itself the single measurement (such a call is far slower than anything a warm-up
    removes, and it comes after the validation call of the same code).

    Parameters
    ----------
    fn : callable
        No arguments.
    repeats : int
        At least 1.
    budget, settle, min_seconds : float
        Seconds.
    warm_up : float, optional
        Seconds of a call of ``fn`` already made in this process (the reference's run that
        computed the truth a pass is checked against): it serves as the warm-up, with no pause.

    Returns
    -------
    Timing
    """
    if warm_up is None:
        time.sleep(settle)
        start = time.perf_counter()
        fn()
        warm_up = time.perf_counter() - start
    if warm_up >= budget:
        return Timing(warm_up, 1, warm_up)
    times: list[float] = []
    spent = 0.0
    while (len(times) < repeats or spent < min_seconds) and spent < budget:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return Timing(statistics.median(times), len(times), min(times))


# ---------------------------------------------------------------- threads


def _numpy_openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """Get/set of the thread count of the OpenBLAS bundled in numpy's wheel, or None.

    numpy wheels ship scipy-openblas in ``numpy.libs``, with the thread functions suffixed
    ``64_`` (ILP64) or not; other builds (MKL, Accelerate, a system BLAS) are not recognised.
    """
    for lib in bundled_openblas(np):
        for suffix in ("64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return (lambda get=get: int(get())), (lambda n, put=put: put(ctypes.c_int(n)))
    return None


@contextlib.contextmanager
def thread_limit(threads: int, torch: ModuleType | None) -> Iterator[str]:
    """Run the fused kernels, numpy's BLAS and PyTorch on ``threads`` threads, then restore.

    Yields
    ------
    str
        How the reference's threads were set, for the table header.
    """
    numpy_blas = _numpy_openblas()
    saved_fused = _config.get_num_threads()
    saved_numpy = numpy_blas[0]() if numpy_blas else None
    saved_torch = torch.get_num_threads() if torch else None
    _config.set_num_threads(threads)
    if numpy_blas:
        numpy_blas[1](threads)
        note = f"numpy's OpenBLAS limited to {threads} threads"
    else:
        note = "numpy's BLAS with its own thread count (not an OpenBLAS fusedrnn can set)"
    if torch:
        torch.set_num_threads(threads)
    try:
        yield note
    finally:
        _config.set_num_threads(saved_fused)
        if numpy_blas:
            numpy_blas[1](saved_numpy)
        if torch:
            torch.set_num_threads(saved_torch)
