#include "cross_entropy.h"

#include <algorithm>

#include "common/isa_table.h"
#include "common/threading.h"

namespace fusedrnn {
namespace {
// Below this many logits a second thread costs more to wake than it saves (one exp per logit).
constexpr int64_t kCrossEntropyParallelMin = 1 << 15;
}  // namespace

// dlogits: [N,V] or null  row_losses: [N]  logits: [N,V]  targets: [N]
template <typename T>
double cross_entropy(T* dlogits, T* row_losses, const T* logits, const int64_t* targets, int64_t N,
                     int64_t V, int64_t ignore_index, Reduction reduction) {
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += targets[n] != ignore_index;
  // mean: d(sum/count) = d(sum)/count; with count = 0 every row is ignored, so no row is scaled
  const T scale =
      reduction == Reduction::sum ? T(1) : (count ? T(1) / static_cast<T>(count) : T(0));
  const auto kernel = pointwise<T>().cross_entropy_rows;
  const int threads = N * V >= kCrossEntropyParallelMin
                          ? static_cast<int>(std::min<int64_t>(get_num_threads(), N))
                          : 1;
  run_team(threads, [&](int member, int members) {
    const int64_t r0 = share_begin(N, member, members);
    const int64_t r1 = share_begin(N, member + 1, members);
    kernel(r1 - r0, V, logits + r0 * V, targets + r0, ignore_index, scale,
           dlogits ? dlogits + r0 * V : nullptr, row_losses + r0);
  });
  double total = 0;  // in row order, in double: the same loss on any number of threads
  for (int64_t n = 0; n < N; ++n) total += row_losses[n];
  if (reduction == Reduction::sum) return total;
  return total / static_cast<double>(count);  // 0/0 = NaN when every target is ignored (PyTorch)
}

#define FUSEDRNN_CROSS_ENTROPY(T)                                                               \
  template double cross_entropy<T>(T*, T*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                                   Reduction);
FUSEDRNN_CROSS_ENTROPY(float)
FUSEDRNN_CROSS_ENTROPY(double)

}  // namespace fusedrnn
