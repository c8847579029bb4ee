"""What the benchmark learns about the machine: its float32 GEMM ceiling, CPU name and memory.

`gemm_ceiling` is the rate the table's ``% peak`` is a share of; `MemoryPeak` the resident-memory
high-water mark around a call (Linux).
"""

from __future__ import annotations

import contextlib
import platform
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations here are never evaluated

GEMM_SIZE = 2048
"""Side of the square float32 GEMM that measures the ceiling."""


def gemm_ceiling(size: int = GEMM_SIZE, repeats: int = 5) -> float:
    """This machine's float32 GEMM rate in GFLOP/s: ``a @ b`` of two (size, size) numpy arrays.

    The best of ``repeats`` products after a warm-up, with the threads numpy's BLAS has now. The
    best, not the median: a ceiling is what the machine can do, and on a shared machine the noise
    only ever slows a product down (phases at half the rate are common on 2 shared cores).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _status_bytes(field_name: str) -> int | None:
    """A ``kB`` line of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes, or None."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return None


class MemoryPeak:
    """The process's resident memory at its height while the ``with`` block ran.

    Linux only: entering resets the kernel's high-water mark (``VmHWM``, by writing 5 to
    /proc/self/clear_refs); on leaving, ``process_bytes`` is that mark and ``added_bytes`` the
    mark above the resident memory at entry: the outputs, workspace and any scratch the call
    needed beyond what the process already held. Both stay None where this cannot be measured.
    """

    def __init__(self) -> None:
        self.before: int | None = None
        self.process_bytes: int | None = None
        self.added_bytes: int | None = None

    def __enter__(self) -> Self:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return self
        self.before = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            return
        self.process_bytes = _status_bytes("VmHWM")
        if self.process_bytes is not None:
            self.added_bytes = max(0, self.process_bytes - self.before)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


ISA_LIMITS = {
    "avx2": {
        "OPENBLAS_CORETYPE": "Haswell",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "avx512": {
        "OPENBLAS_CORETYPE": "SkylakeX",
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}
"""``bench --isa``: the environment that limits the other libraries of a run to the instruction
set fusedrnn is forced onto, read when each loads (so set before the process starts): numpy's
and scipy's OpenBLAS (DYNAMIC_ARCH kernels), PyTorch's own kernels (ATen), oneDNN (its LSTM, GRU
and matmul) and MKL (its GEMM). avx512 leaves out AMX (and oneDNN's VNNI and BF16). onnxruntime
has no such setting and keeps its own choice."""

_forced_isa: str | None = None


def force_isa(isa: str) -> None:
    """Run fusedrnn's kernels on ``isa`` (a key of `ISA_LIMITS`) for the rest of the process,
    AMX's tiles off with avx512; `isa_note` says so in every table's header. The process must
    have started with ``ISA_LIMITS[isa]`` in its environment (``bench --isa`` does both)."""
    global _forced_isa
    from .. import _core

    _core.select_isa(isa)
    if isa == "avx512":
        _core._set_amx_enabled(False)
    _forced_isa = isa


def isa_note() -> str:
    """For a table's header: which instruction set a ``bench --isa`` run was limited to, or ''."""
    if _forced_isa is None:
        return ""
    limits = " ".join(f"{k}={v}" for k, v in ISA_LIMITS[_forced_isa].items())
    amx = ", AMX off" if _forced_isa == "avx512" else ""
    return (
        f"{_forced_isa} forced (--isa{amx}); PyTorch and the BLAS limited alike ({limits}); "
        f"onnxruntime keeps its own choice"
    )


def torch_description(torch) -> str:
    """PyTorch's version and the instruction set its own kernels dispatch to (``2.13.0+cpu,
    AVX512 kernels``)."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return f"{torch.__version__}, {capability()} kernels" if capability else torch.__version__


BUSY_LOAD = 1.0
"""A 1-minute load average, before the run, from which other programs are competing for cores."""
