# Written by hand (pybind11-stubgen cannot read a Cython module); tests/package/test_stubs.py checks it
# against the module.
"""The BLAS that SciPy ships, handed to the C++ kernels as function addresses."""

def gemm_addresses() -> tuple[int, int, int, int]:
    """Return ``(sgemm, dgemm, sgemv, dgemv)``: addresses of SciPy's Fortran-ABI routines."""
