#include "optim.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "common/threading.h"

namespace fusedrnn {

namespace {
// Below this many elements a second thread costs more to wake than it saves (a square root and
// a division an element: about 1.6 ns on one Xeon core, the char-LM's 262,144-element W_hh
// 0.4 ms).
constexpr int64_t kAdamParallelMin = 1 << 15;
// elements: the members' shares meet on a cache line (of an array that starts on one)
constexpr int64_t kAdamShareAlign = 16;

// The loop of adam_update with its options fixed, so that it has no branch and the compiler
// vectorizes it (with them in the loop it did not: 4.7 ns an element on a Zen 3, the char-LM's
// Adam step 1.5 ms for its 325,000 parameters).
template <typename T, bool Maximize, bool Decoupled, bool L2, bool Amsgrad>
void adam_loop(T* param, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, const T* grad, int64_t n,
               const AdamStep& s) {
  const T beta1 = T(s.beta1), beta2 = T(s.beta2), one_minus_beta1 = T(1 - s.beta1);
  const T one_minus_beta2 = T(1 - s.beta2), weight_decay = T(s.weight_decay);
  const T decay = T(1 - s.lr * s.weight_decay), eps = T(s.eps);
  const T bias_correction2 = T(std::sqrt(1 - std::pow(s.beta2, double(s.step))));
  const T step_size = T(s.lr / (1 - std::pow(s.beta1, double(s.step))));
  for (int64_t i = 0; i < n; ++i) {
    T g = Maximize ? -grad[i] : grad[i];
    T p = param[i];
    if (Decoupled) p = p * decay;
    if (L2) g = g + T(weight_decay * p);
    // (each product rounded before the sum, as NumPy's separate operations)
    const T m = T(exp_avg[i] * beta1) + T(one_minus_beta1 * g);
    T v = T(exp_avg_sq[i] * beta2) + T(one_minus_beta2 * T(g * g));
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (Amsgrad) {  // np.maximum: a NaN in either wins
      const T v_max = max_exp_avg_sq[i];
      v = (v_max >= v || v_max != v_max) ? v_max : v;
      max_exp_avg_sq[i] = v;
    }
    const T denom = T(std::sqrt(v) / bias_correction2) + eps;
    param[i] = p - T(T(m / denom) * step_size);
  }
}

template <typename T, bool... Fixed>
void adam_dispatch(T* param, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, const T* grad, int64_t n,
                   const AdamStep& s, std::initializer_list<bool> options) {
  if constexpr (sizeof...(Fixed) == 4) {
    adam_loop<T, Fixed...>(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, n, s);
  } else {
    const bool next = *(options.begin() + sizeof...(Fixed));
    if (next)
      adam_dispatch<T, Fixed..., true>(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, n, s,
                                       options);
    else
      adam_dispatch<T, Fixed..., false>(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, n, s,
                                        options);
  }
}
}  // namespace

// The arguments and the formula: optim.h.
// Elementwise, so the members' shares give the bits of one thread.
template <typename T>
void adam_update(T* param, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, const T* grad, int64_t n,
                 const AdamStep& s) {
  const bool decay = s.weight_decay != 0;
  const std::initializer_list<bool> options = {s.maximize, decay && s.decoupled_weight_decay,
                                               decay && !s.decoupled_weight_decay,
                                               max_exp_avg_sq != nullptr};
  const int64_t lines = ceil_div(n, kAdamShareAlign);
  const int threads =
      n >= kAdamParallelMin ? static_cast<int>(std::min<int64_t>(get_num_threads(), lines)) : 1;
  run_team(threads, [&](int member, int members) {
    const int64_t i0 = std::min(n, share_begin(lines, member, members) * kAdamShareAlign);
    const int64_t i1 = std::min(n, share_begin(lines, member + 1, members) * kAdamShareAlign);
    adam_dispatch<T>(param + i0, exp_avg + i0, exp_avg_sq + i0,
                     max_exp_avg_sq ? max_exp_avg_sq + i0 : nullptr, grad + i0, i1 - i0, s,
                     options);
  });
}

template <typename T>
double sum_of_squares(const T* x, int64_t n) {
  double sums[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) sums[k] += double(x[i + k]) * double(x[i + k]);
  for (; i < n; ++i) sums[0] += double(x[i]) * double(x[i]);
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

#define FUSEDRNN_OPTIM(T)                                                           \
  template void adam_update<T>(T*, T*, T*, T*, const T*, int64_t, const AdamStep&); \
  template double sum_of_squares<T>(const T*, int64_t);
FUSEDRNN_OPTIM(float)
FUSEDRNN_OPTIM(double)

}  // namespace fusedrnn
