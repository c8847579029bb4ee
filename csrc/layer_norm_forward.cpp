#include "common/layer_norm_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "layer_norm.h"

namespace fusedrnn {

int layer_norm_team_size(int64_t M, int64_t N) {
  // a few operations per element: a team pays off from the work of one recurrent step on
  return M >= 2 ? gemm_team_size(M * N) : 1;
}

// y: [M,N]  mean, rstd: [M] or null  x: [M,N]  gamma, beta: [N] or null
template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, T eps,
                        int64_t M, int64_t N) {
  const auto& kernels = layer_norm_kernels<T>();
  run_team(layer_norm_team_size(M, N), [&](int member, int members) {
    const Team team{member, members};
    const int64_t r0 = team.begin(M), rows = team.end(M) - r0;
    if (rows > 0)
      kernels.forward_rows(rows, N, x + r0 * N, y + r0 * N, gamma, beta, eps,
                           mean ? mean + r0 : nullptr, rstd ? rstd + r0 : nullptr);
  });
}

template void layer_norm_forward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, float, int64_t, int64_t);
template void layer_norm_forward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, double, int64_t, int64_t);

}  // namespace fusedrnn
