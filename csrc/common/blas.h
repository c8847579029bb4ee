// Row-major GEMM on top of the Fortran BLAS that SciPy ships.
//
// The binding hands the routine addresses over once (set_blas_gemm); kernels then call gemm<T>()
// with row-major arguments, as numpy lays arrays out.
#pragma once
#include <cstdint>

namespace fusedrnn {

using sgemm_fn = void (*)(const char* transa, const char* transb, const int* m, const int* n,
                          const int* k, const float* alpha, const float* a, const int* lda,
                          const float* b, const int* ldb, const float* beta, float* c,
                          const int* ldc);
using dgemm_fn = void (*)(const char* transa, const char* transb, const int* m, const int* n,
                          const int* k, const double* alpha, const double* a, const int* lda,
                          const double* b, const int* ldb, const double* beta, double* c,
                          const int* ldc);

using sgemv_fn = void (*)(const char* trans, const int* m, const int* n, const float* alpha,
                          const float* a, const int* lda, const float* x, const int* incx,
                          const float* beta, float* y, const int* incy);
using dgemv_fn = void (*)(const char* trans, const int* m, const int* n, const double* alpha,
                          const double* a, const int* lda, const double* x, const int* incx,
                          const double* beta, double* y, const int* incy);

void set_blas_gemm(sgemm_fn sgemm, dgemm_fn dgemm, sgemv_fn sgemv, dgemv_fn dgemv);
bool blas_ready();

// OpenBLAS's openblas_set_num_threads_local (0.3.27+): the thread count of BLAS calls made from
// the calling thread; returns the previous one. Handed over like the GEMMs; may stay null.
using blas_threads_local_fn = int (*)(int);
void set_blas_threads_local(blas_threads_local_fn fn);
bool blas_threads_local_available();

// Inside a team (common/threading.h) BLAS calls run on the calling member alone, so that its GEMMs
// do not wake BLAS's pool beside the team: gemm() limits the calling thread's BLAS to one thread at
// its first call inside a team, and the team's end restores the count. Lazily, because setting
// OpenBLAS's count wakes its pool, which then spins beside the team (measured: 3% of an LSTM
// inference's samples, in teams that made no BLAS call at all).
void restore_blas_threads_after_team();

// Largest size one BLAS argument (an LP64 int) can carry; the binding refuses larger problems.
constexpr int64_t kMaxBlasDim = 2147483647;

// Row-major C[M,N] = alpha * op(A) @ op(B) + beta * C, where op(A) is [M,K] (A^T if trans_a) and
// op(B) is [K,N] (B^T if trans_b); lda/ldb/ldc are row strides in elements. A single row or
// column goes to GEMV, which BLAS does much faster than a GEMM of that shape (one batch row).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace fusedrnn
