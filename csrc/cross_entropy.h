// Softmax cross-entropy over rows of logits with integer targets: the loss and the gradient of the
// logits in one pass over each row (the contract: docs/training.md).
//
//   p_n = softmax(logits_n),  loss_n = logsumexp(logits_n) - logits_n[target_n]
//   loss = sum_n loss_n (Reduction::sum)  or  sum_n loss_n / count (Reduction::mean)
//   dlogits_n = scale * (p_n - onehot(target_n)),  scale = 1 (sum) or 1 / count (mean)
//
// count is the number of rows whose target is not ignore_index. Ignored rows add nothing to the
// loss and get a zero gradient row. Mean over count = 0 is NaN (0/0) with an all-zero gradient,
// as in PyTorch. logsumexp subtracts the row maximum first, so logits of any magnitude are safe.
//
// Shapes: logits [N,V]  targets [N] in [0, V) or == ignore_index (the binding checks)
//         dlogits [N,V] or null (loss only)  row_losses [N] (scratch: the loss of every row)
// The row losses are summed in double in row order, so the loss does not depend on the threads.
#pragma once
#include <cstdint>

namespace fusedrnn {

enum class Reduction : int { mean = 0, sum = 1 };

// Returns the reduced loss (in double; the binding casts it to the logits' dtype).
template <typename T>
double cross_entropy(T* dlogits, T* row_losses, const T* logits, const int64_t* targets, int64_t N,
                     int64_t V, int64_t ignore_index, Reduction reduction);

}  // namespace fusedrnn
