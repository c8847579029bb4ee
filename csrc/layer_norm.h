// Layer normalisation over the last N values of each of M rows, as torch.nn.LayerNorm:
//
//   y = (x - mean) * rstd * gamma + beta,   mean = mean(x_row),
//   rstd = 1 / sqrt(var + eps),             var = mean((x_row - mean)^2)  (biased)
//
// Shapes, C order, one dtype T (float or double):
//   x [M,N]  gamma [N] or null (1)  beta [N] or null (0)  y [M,N]
//   mean, rstd [M]: saved by the forward for the backward (null in inference)
//   dy [M,N]  dx [M,N] (=)  dgamma [N] or null (+=)  dbeta [N] or null (+=)
//   scratch [layer_norm_backward_scratch_size(M, N)]
// The rows are split over a team of the kernels' threads when there are enough of them (the
// work of one recurrent step, common/threading.h). The backward reads each row once: dx and the
// row's share of dgamma and dbeta in one pass, each member's shares summed in a buffer of its
// own (the first member's straight into dgamma, dbeta), then added in by columns after a
// barrier. So dgamma and dbeta are summed in an order set by the team's size: their rounding
// (not y, not dx) may differ between thread counts. Kernels: common/layer_norm_table.h.
#pragma once
#include <cstdint>

namespace fusedrnn {

template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, T eps,
                        int64_t M, int64_t N);

int64_t layer_norm_backward_scratch_size(int64_t M, int64_t N);

template <typename T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, T* scratch, const T* dy, const T* x,
                         const T* gamma, const T* mean, const T* rstd, int64_t M, int64_t N);

// Threads for a pass over M rows of N values (1 below the work of one recurrent step).
int layer_norm_team_size(int64_t M, int64_t N);

}  // namespace fusedrnn
