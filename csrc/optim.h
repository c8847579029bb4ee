// The optimizers' elementwise updates (fusedrnn.optim; docs/training.md): one pass over a
// parameter's elements where NumPy takes one pass per operation. The formulas, in the order and
// the dtype of every operation of the NumPy twin (fusedrnn.reference.adam_update):
//
//   g = -grad if maximize, else grad
//   p = p * (1 - lr * weight_decay)           if decoupled_weight_decay (AdamW)
//   g = g + weight_decay * p                  if weight_decay and not decoupled (L2)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   v_max = max(v_max, v)                     if amsgrad (v_max then replaces v below)
//   p = p - (m / (sqrt(v) / sqrt(1 - beta2^t) + eps)) * lr / (1 - beta1^t)
//
// Shapes: param, grad, exp_avg (m), exp_avg_sq (v) [n]; max_exp_avg_sq [n] or null (amsgrad off).
// The hyperparameters are cast to T once, as NumPy's dtype(...) casts them. So the bits are
// NumPy's where the build has no FMA (x86-64's portable build, which compiles this file); a
// compiler may fuse a multiply and an add elsewhere (FUSEDRNN_NATIVE=1, aarch64).
#pragma once
#include <cstdint>

namespace fusedrnn {

struct AdamStep {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled_weight_decay = false, maximize = false;
  int64_t step = 1;  // t, from 1
};

template <typename T>
void adam_update(T* param, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, const T* grad, int64_t n,
                 const AdamStep& s);

// sum of x[i]^2 in double, in four running sums over i mod 4 added at the end: the squared
// norm of a gradient (clip_grad_norm_), the same whatever the thread count (one thread).
template <typename T>
double sum_of_squares(const T* x, int64_t n);

}  // namespace fusedrnn
