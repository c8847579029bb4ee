#include "linear.h"

#include <algorithm>

#include "common/blas.h"
#include "common/sequence.h"

namespace fusedrnn {
namespace {
// Rows from which the step kernel runs the forward product (see linear.h).
constexpr int64_t kPackedRows = 4;
}  // namespace

int64_t linear_forward_scratch_size(int64_t M, int64_t K, int64_t N) {
  return M >= kPackedRows ? packed_weights_size(K, 1, N) : 0;  // W^T in panels
}

int64_t linear_backward_scratch_size(int64_t M, int64_t N) {
  return input_gradients_scratch_size(N, M);  // the packed last panels of w and x
}

// y: [M,N]  scratch: [linear_forward_scratch_size]  x: [M,K]  w: [N,K]  b: [N] or null
template <typename T>
void linear_forward(T* y, T* scratch, const T* x, const T* w, const T* b, int64_t M, int64_t K,
                    int64_t N) {
  if (M == 0) return;
  if (b)
    for (int64_t m = 0; m < M; ++m) std::copy(b, b + N, y + m * N);
  // y = x w^T (+ y, which holds b)
  if (M < kPackedRows)
    gemm<T>(false, true, M, N, K, T(1), x, K, w, K, b ? T(1) : T(0), y, N);
  else
    project_inputs(y, N, scratch, x, w, M, K, 1, N, b != nullptr);
}

// dx: [M,K] or null  dw: [N,K] or null  db: [N] or null  scratch: [linear_backward_scratch_size]
// dy: [M,N]  x: [M,K]  w: [N,K]
template <typename T>
void linear_backward(T* dx, T* dw, T* db, T* scratch, const T* dy, const T* x, const T* w,
                     int64_t M, int64_t K, int64_t N) {
  if (M == 0) return;
  // forward: y = x w^T + b  ->  dx = dy w,  dw += dy^T x,  db += the column sums of dy
  run_team(gemm_team_size(2 * M * N * K), [&](int member, int members) {
    const Team team{member, members};
    input_gradients(team, dx, dw, scratch, dy, N, N, x, w, M, K);
    if (db) add_column_sums(team, db, dy, M, N, N);
  });
}

#define FUSEDRNN_LINEAR(T)                                                                         \
  template void linear_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t,          \
                                  int64_t);                                                        \
  template void linear_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, \
                                   int64_t);
FUSEDRNN_LINEAR(float)
FUSEDRNN_LINEAR(double)

}  // namespace fusedrnn
