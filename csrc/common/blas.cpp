#include "common/blas.h"

#include <algorithm>
#include <cstddef>

#include "common/threading.h"

namespace fusedrnn {
namespace {
sgemm_fn g_sgemm = nullptr;
dgemm_fn g_dgemm = nullptr;
sgemv_fn g_sgemv = nullptr;
dgemv_fn g_dgemv = nullptr;
blas_threads_local_fn g_threads_local = nullptr;

void call(const char* ta, const char* tb, const int* m, const int* n, const int* k,
          const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
          const float* beta, float* c, const int* ldc) {
  g_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void call(const char* ta, const char* tb, const int* m, const int* n, const int* k,
          const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
          const double* beta, double* c, const int* ldc) {
  g_dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void call_gemv(const char* t, const int* m, const int* n, const float* alpha, const float* a,
               const int* lda, const float* x, const int* incx, const float* beta, float* y,
               const int* incy) {
  g_sgemv(t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
void call_gemv(const char* t, const int* m, const int* n, const double* alpha, const double* a,
               const int* lda, const double* x, const int* incx, const double* beta, double* y,
               const int* incy) {
  g_dgemv(t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

// y[len] = alpha * op(M) x + beta * y for a row-major matrix M [rows, cols] with row stride ld:
// op(M) = M (len = rows) or M^T (len = cols). Column-major, M is M^T: the transposes swap.
template <typename T>
void gemv_rowmajor(bool trans, int64_t rows, int64_t cols, T alpha, const T* m, int64_t ld,
                   const T* x, int64_t incx, T beta, T* y, int64_t incy) {
  const char t = trans ? 'N' : 'T';
  const int M = static_cast<int>(cols), N = static_cast<int>(rows), LD = static_cast<int>(ld);
  const int IX = static_cast<int>(incx), IY = static_cast<int>(incy);
  call_gemv(&t, &M, &N, &alpha, m, &LD, x, &IX, &beta, y, &IY);
}
}  // namespace

void set_blas_gemm(sgemm_fn sgemm, dgemm_fn dgemm, sgemv_fn sgemv, dgemv_fn dgemv) {
  g_sgemm = sgemm;
  g_dgemm = dgemm;
  g_sgemv = sgemv;
  g_dgemv = dgemv;
}

bool blas_ready() { return g_sgemm && g_dgemm && g_sgemv && g_dgemv; }

void set_blas_threads_local(blas_threads_local_fn fn) { g_threads_local = fn; }
bool blas_threads_local_available() { return g_threads_local != nullptr; }

namespace {
thread_local int t_blas_threads_before_team = 0;  // 0: not limited by a team

void limit_blas_threads_in_team() {
  if (g_threads_local && t_blas_threads_before_team == 0 && inside_team())
    t_blas_threads_before_team = std::max(1, g_threads_local(1));
}
}  // namespace

void restore_blas_threads_after_team() {
  if (g_threads_local && t_blas_threads_before_team > 0)
    g_threads_local(t_blas_threads_before_team);
  t_blas_threads_before_team = 0;
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  limit_blas_threads_in_team();
  if (k == 0) {  // BLAS would accept it, but leading dimensions of 0 are illegal: do it here
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  if (m == 1) {  // c[n] = op(B)^T a: B is [n,k] (trans_b) or [k,n]; a's stride is lda if trans_a
    gemv_rowmajor<T>(!trans_b, trans_b ? n : k, trans_b ? k : n, alpha, b, ldb, a,
                     trans_a ? lda : 1, beta, c, 1);
    return;
  }
  if (n == 1) {  // c[m] = op(A) b: A is [m,k] or [k,m] (trans_a); b's stride is ldb unless trans_b
    gemv_rowmajor<T>(trans_a, trans_a ? k : m, trans_a ? m : k, alpha, a, lda, b, trans_b ? 1 : ldb,
                     beta, c, ldc);
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char ta = trans_b ? 'T' : 'N';
  const char tb = trans_a ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  call(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace fusedrnn
