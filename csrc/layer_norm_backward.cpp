#include "common/layer_norm_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "layer_norm.h"

namespace fusedrnn {

// The sums of dgamma and dbeta of every member but the first: [members - 1][2N].
int64_t layer_norm_backward_scratch_size(int64_t M, int64_t N) {
  return (layer_norm_team_size(M, N) - 1) * 2 * N;
}

// dx: [M,N]  dgamma, dbeta: [N] or null  scratch: [layer_norm_backward_scratch_size]
// dy, x: [M,N]  gamma: [N] or null  mean, rstd: [M]
template <typename T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, T* scratch, const T* dy, const T* x,
                         const T* gamma, const T* mean, const T* rstd, int64_t M, int64_t N) {
  const auto& kernels = layer_norm_kernels<T>();
  run_team(layer_norm_team_size(M, N), [&](int member, int members) {
    const Team team{member, members};
    // This member's sums of dgamma and dbeta over its rows: the first member's go straight
    // into them, the others' into their part of the scratch, from zero.
    T* own = member ? scratch + (member - 1) * 2 * N : nullptr;
    if (own) std::fill(own, own + 2 * N, T(0));
    T* dg = dgamma ? (own ? own : dgamma) : nullptr;
    T* db = dbeta ? (own ? own + N : dbeta) : nullptr;
    const int64_t r0 = team.begin(M), rows = team.end(M) - r0;
    // forward: y = xhat * gamma + beta, xhat = (x - mean) * rstd
    if (rows > 0)
      kernels.backward_rows(rows, N, dy + r0 * N, x + r0 * N, gamma, mean + r0, rstd + r0,
                            dx + r0 * N, dg, db);
    if (members == 1 || !(dgamma || dbeta)) return;
    team_barrier();  // every member's sums are complete; then each adds its columns of them
    for (int m = 1; m < members; ++m) {
      const T* sums = scratch + (m - 1) * 2 * N;
      for (int64_t j = team.begin(N); j < team.end(N); ++j) {
        if (dgamma) dgamma[j] += sums[j];
        if (dbeta) dbeta[j] += sums[N + j];
      }
    }
  });
}

template void layer_norm_backward<float>(float*, float*, float*, float*, const float*, const float*,
                                         const float*, const float*, const float*, int64_t,
                                         int64_t);
template void layer_norm_backward<double>(double*, double*, double*, double*, const double*,
                                          const double*, const double*, const double*,
                                          const double*, int64_t, int64_t);

}  // namespace fusedrnn
