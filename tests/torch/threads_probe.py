"""Not a test: what test_threads.py checks, run in this process or, as ``python -m
tests.torch.threads_probe``, in a fresh one that imports torch before fusedrnn."""

from __future__ import annotations

import json
import os

import torch  # first, when run as a program

import fusedrnn
import fusedrnn.torch as ft
from fusedrnn._config import config


def openmp_runtimes() -> list:
    """The OpenMP libraries mapped into this process (GNU, LLVM or Intel)."""
    with open("/proc/self/maps") as maps:
        return sorted(
            {line.split()[-1] for line in maps if any(n in line for n in ("libgomp", "libomp",
                                                                          "libiomp"))}
        )  # fmt: skip


def report() -> str:
    """JSON: the runtimes, and (kernel threads, BLAS threads) after a fusedrnn.torch forward
    and backward under torch.set_num_threads(1) and (2)."""
    lstm = ft.LSTM(3, 8, num_layers=2)
    x = torch.randn(6, 4, 3)
    counts = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        lstm(x)[0].sum().backward()
        counts[n] = (fusedrnn.get_num_threads(), config()["blas_threads"])
    defaults = [torch.get_num_threads(), os.cpu_count()]
    return json.dumps({"runtimes": openmp_runtimes(), "counts": counts, "defaults": defaults})


if __name__ == "__main__":
    print(report())
