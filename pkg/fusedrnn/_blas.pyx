# The BLAS that SciPy ships, handed to the C++ kernels as function addresses.
#
# scipy.linalg.cython_blas is SciPy's documented interface for compiled code to call its BLAS; the
# kernels in fusedrnn._core take the raw addresses once at import (fusedrnn/_config.py), so the
# extension links no BLAS of its own and uses the same tuned OpenBLAS that SciPy uses.
from libc.stdint cimport uintptr_t
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


def gemm_addresses():
    """Return ``(sgemm, dgemm, sgemv, dgemv)``: addresses of SciPy's Fortran-ABI routines."""
    # A cimported cdef function is a pointer filled at import; its value is the routine itself.
    return (<uintptr_t><void*>sgemm, <uintptr_t><void*>dgemm,
            <uintptr_t><void*>sgemv, <uintptr_t><void*>dgemv)
