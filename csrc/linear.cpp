#include "linear.h"

#include <algorithm>

#include "common/blas.h"

namespace fusedrnn {

// y: [M,N]  x: [M,K]  w: [N,K]  b: [N] or null
template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t M, int64_t K, int64_t N) {
  if (M == 0) return;
  if (b)
    for (int64_t m = 0; m < M; ++m) std::copy(b, b + N, y + m * N);
  // y = x w^T (+ y, which holds b)
  gemm<T>(false, true, M, N, K, T(1), x, K, w, K, b ? T(1) : T(0), y, N);
}

// dx: [M,K] or null  dw: [N,K]  db: [N] or null  dy: [M,N]  x: [M,K]  w: [N,K]
template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t M,
                     int64_t K, int64_t N) {
  if (M == 0) return;
  // forward: y = x w^T + b
  if (dx) gemm<T>(false, false, M, K, N, T(1), dy, N, w, K, T(0), dx, K);  // dx = dy w
  gemm<T>(true, false, N, K, M, T(1), dy, N, x, K, T(1), dw, K);           // dw += dy^T x
  if (db)
    for (int64_t m = 0; m < M; ++m) {  // db += sum over rows of dy
      const T* row = dy + m * N;
      for (int64_t n = 0; n < N; ++n) db[n] += row[n];
    }
}

#define FUSEDRNN_LINEAR(T)                                                                      \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t); \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                   int64_t);
FUSEDRNN_LINEAR(float)
FUSEDRNN_LINEAR(double)

}  // namespace fusedrnn
