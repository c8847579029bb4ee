"""Run-time configuration: the BLAS handed to the kernels, threads, the instruction set in use."""

from __future__ import annotations

import ctypes
import glob
import os
import platform
from collections.abc import Iterator

import numpy as np
import scipy

from . import _blas, _core

_core.set_blas(*_blas.gemm_addresses())


def bundled_openblas(package) -> Iterator[ctypes.CDLL]:
    """The OpenBLAS libraries a package's wheel bundles in ``<name>.libs`` (numpy's, scipy's),
    loaded (already loaded by the package: this only finds them); none for other builds."""
    libs_dir = os.path.join(
        os.path.dirname(os.path.dirname(package.__file__)), f"{package.__name__}.libs"
    )
    for path in sorted(glob.glob(os.path.join(libs_dir, "*openblas*"))):
        try:
            yield ctypes.CDLL(path)
        except OSError:
            continue


def _find_scipy_openblas() -> ctypes.CDLL | None:
    """SciPy's bundled OpenBLAS (already loaded by scipy.linalg), to set its thread count."""
    return next(
        (lib for lib in bundled_openblas(scipy) if hasattr(lib, "scipy_openblas_set_num_threads")),
        None,
    )


_openblas = _find_scipy_openblas()
if _openblas is not None and hasattr(_openblas, "openblas_set_num_threads_local"):
    # Lets kernels that run their own threads make their BLAS calls single-threaded.
    _core.set_blas_threads_local(
        ctypes.cast(_openblas.openblas_set_num_threads_local, ctypes.c_void_p).value
    )


def get_num_threads() -> int:
    """The number of threads the kernels use (their elementwise passes and their BLAS calls)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the threads of the kernels and of the BLAS they call.

    Parameters
    ----------
    n : int
        At least 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _core.set_num_threads(int(n))
    if _openblas is not None:
        _openblas.scipy_openblas_set_num_threads(ctypes.c_int(int(n)))


def empty_cache() -> None:
    """Free the memory fusedrnn keeps for later calls: released outputs and finished scratch.

    The arrays the kernels return (outputs, workspaces, gradients) and their scratch come from a
    pool: once Python frees an array, or a call ends, its memory serves the next buffer of the
    same size, so a training loop does not pay each step for fresh pages. Up to 256 MiB is kept.
    Like ``torch.cuda.empty_cache``, this returns that memory to the system (with glibc, the free
    pages of the C heap too: ``malloc_trim``); arrays still alive are not affected.
    """
    _core.release_cached_memory()


def _blas_description() -> str:
    if _openblas is None:
        return "scipy.linalg.cython_blas (library not identified)"
    _openblas.scipy_openblas_get_config.restype = ctypes.c_char_p
    return f"scipy.linalg.cython_blas -> {_openblas.scipy_openblas_get_config().decode()}"


def _blas_threads() -> int | None:
    if _openblas is None:
        return None
    return int(_openblas.scipy_openblas_get_num_threads())


def _idle_threads() -> str:
    """What the kernels' idle worker threads do between calls (their own policy: they are not
    OpenMP's threads, so GOMP_SPINCOUNT, read once by whichever library loaded libgomp first,
    does not apply to them)."""
    if not _core.have_openmp():
        return "none (one thread)"
    if _core.openmp_teams():  # fusedrnn.torch: the teams run on PyTorch's OpenMP threads
        spin = os.environ.get("GOMP_SPINCOUNT", "libgomp's default")
        return (
            "OpenMP's threads, shared with PyTorch: OpenMP's idle policy (GOMP_SPINCOUNT as it "
            f"was when OpenMP loaded; now {spin})"
        )
    return (
        f"spin, then yield the core, then sleep after {_core.worker_idle_microseconds()} us "
        "(fusedrnn's own threads: GOMP_SPINCOUNT does not apply)"
    )


def _isa_vectors(isa: str) -> str:
    """What the instruction-set path `isa` computes with, on this machine."""
    if isa == "avx512":
        return "AVX-512, 64-byte vectors"
    if isa == "avx2":
        return "AVX2 + FMA, 32-byte vectors"
    machine = platform.machine().lower()
    unit = (
        "SSE2"
        if machine in ("x86_64", "amd64", "i386", "i686")
        else "NEON"
        if machine in ("aarch64", "arm64")
        else "the compiler's"
    )
    return f"portable 16-byte vectors ({unit})"


def supported_isas() -> list[str]:
    """The instruction-set paths of this build that this CPU can run."""
    return [n for n in ("baseline", "avx2", "avx512") if _core.isa_supported(n)]


def _amx_use() -> str:
    """Whether AMX's tiles serve inference with bfloat16 weights on this machine."""
    if _core.amx_active():
        return "yes: inference with bfloat16 weights (weights_dtype='bfloat16')"
    if _core.amx_usable():
        return "available, not in use (it serves the avx512 path)"
    return "no (needs an Intel Xeon with AMX, Sapphire Rapids on, and Linux 5.16 on)"


def config() -> dict:
    """The configuration as a dict (what `show_config` prints)."""
    from . import __version__

    return {
        "fusedrnn": __version__,
        "isa": _core.active_isa(),
        "isa_vectors": _isa_vectors(_core.active_isa()),
        "isa_supported": supported_isas(),
        "amx": _amx_use(),
        "threads": get_num_threads(),
        "openmp": _core.have_openmp(),
        "idle_threads": _idle_threads(),
        "cached_bytes": _core.cached_bytes(),
        "blas": _blas_description(),
        "blas_threads": _blas_threads(),
        "blas_thread_local_control": _core.blas_threads_local_available(),
        "compiler": _core.compiler,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def show_config() -> None:
    """Print the kernel path in use, the threads, the BLAS and the versions."""
    for key, value in config().items():
        if key == "openmp" and not value:
            value = "False (built without OpenMP: the kernels run on one thread; the BLAS they "
            value += "call still uses `threads`)"
        print(f"{key:>14}: {value}")
