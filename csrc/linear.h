// A dense layer over rows: y = x W^T + b, forward and backward, on the kernels' BLAS (so that
// fusedrnn.set_num_threads governs it like the recurrent kernels, and numpy's own BLAS pool is
// never woken in a training loop). The bias is fused into the GEMM (rows of y start as b, beta=1)
// and the weight gradient is accumulated by the GEMM itself (beta=1), with no temporaries.
//
// Shapes: x [M,K]  w [N,K]  b [N] or null  y [M,N]  dy [M,N]
//         dx [M,K] or null (=)  dw [N,K] (+=)  db [N] or null (+=)
#pragma once
#include <cstdint>

namespace fusedrnn {

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t M, int64_t K, int64_t N);

template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t M,
                     int64_t K, int64_t N);

}  // namespace fusedrnn
