#include "common/layer_norm_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "layer_norm.h"

namespace fusedrnn {

// dx: [M,N]  dgamma, dbeta: [N] or null  dy, x: [M,N]  gamma: [N] or null  mean, rstd: [M]
template <typename T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                         const T* mean, const T* rstd, int64_t M, int64_t N) {
  const auto& kernels = layer_norm_kernels<T>();
  // Each member its rows of dx and its columns of dgamma and dbeta: no element written twice.
  run_team(layer_norm_team_size(M, N), [&](int member, int members) {
    const Team team{member, members};
    const int64_t r0 = team.begin(M), rows = team.end(M) - r0;
    // forward: y = xhat * gamma + beta, xhat = (x - mean) * rstd
    if (rows > 0)
      kernels.backward_rows(rows, N, dy + r0 * N, x + r0 * N, gamma, mean + r0, rstd + r0,
                            dx + r0 * N);
    const int64_t j0 = team.begin(N), width = team.end(N) - j0;
    if (width > 0 && (dgamma || dbeta))
      kernels.param_grads(M, width, N, dy + j0, x + j0, mean, rstd, dgamma ? dgamma + j0 : nullptr,
                          dbeta ? dbeta + j0 : nullptr);
  });
}

template void layer_norm_backward<float>(float*, float*, float*, const float*, const float*,
                                         const float*, const float*, const float*, int64_t,
                                         int64_t);
template void layer_norm_backward<double>(double*, double*, double*, const double*, const double*,
                                          const double*, const double*, const double*, int64_t,
                                          int64_t);

}  // namespace fusedrnn
