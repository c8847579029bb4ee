// A dense layer over rows: y = x W^T + b, forward and backward. From 4 rows on, the GEMMs run on
// the recurrent kernels' step kernel (common/step_gemm.h), on a team of the kernels' threads:
// W^T packed once per call, the bias in the rows of y before the product adds to them, the
// gradients' operands read in place. Fewer rows go to the BLAS, whose GEMV reads W once where
// packing would read and write it first. fusedrnn.set_num_threads governs both, and numpy's own
// BLAS pool is never woken in a training loop.
//
// Shapes: x [M,K]  w [N,K]  b [N] or null  y [M,N]  dy [M,N]
//         dx [M,K] or null (=)  dw [N,K] or null (+=)  db [N] or null (+=); null: not wanted
#pragma once
#include <cstdint>

namespace fusedrnn {

int64_t linear_forward_scratch_size(int64_t M, int64_t K, int64_t N);
int64_t linear_backward_scratch_size(int64_t M, int64_t N);

template <typename T>
void linear_forward(T* y, T* scratch, const T* x, const T* w, const T* b, int64_t M, int64_t K,
                    int64_t N);

template <typename T>
void linear_backward(T* dx, T* dw, T* db, T* scratch, const T* dy, const T* x, const T* w,
                     int64_t M, int64_t K, int64_t N);

}  // namespace fusedrnn
