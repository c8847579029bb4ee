#include "common/blas.h"
#include "common/pointwise.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "rnn.h"

namespace fusedrnn {

int64_t rnn_forward_scratch_size(int64_t H) { return H; }

// x: [T,B,I]  h0: [B,H]  w_ih: [H,I]  w_hh: [H,H]  b_ih, b_hh: [H]
// y: [T,B,H]  h_n: [B,H]  scratch: [H] (the summed bias)
template <typename T>
void rnn_forward(T* y, T* h_n, T* scratch, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                 const T* b_ih, const T* b_hh, int64_t steps, int64_t B, int64_t I, int64_t H,
                 RnnActivation act) {
  const auto kernel = pointwise<T>().rnn_forward[static_cast<int>(act)];
  T* bias = scratch;
  add_vectors(bias, b_ih, b_hh, H);
  // The projection of every input goes straight into y; each step adds W_hh h and activates.
  gemm<T>(false, true, steps * B, H, I, T(1), x, I, w_ih, I, T(0), y, H);
  for (int64_t t = 0; t < steps; ++t) {
    T* h = y + t * B * H;
    gemm<T>(false, true, B, H, H, T(1), t ? h - B * H : h0, H, w_hh, H, T(1), h, H);
    parallel_rows(B, H, [&](int64_t b0, int64_t b1) { kernel(b1 - b0, H, bias, h + b0 * H); });
  }
  copy_or_zero(h_n, steps ? y + (steps - 1) * B * H : h0, B * H);
}

template void rnn_forward<float>(float*, float*, float*, const float*, const float*, const float*,
                                 const float*, const float*, const float*, int64_t, int64_t,
                                 int64_t, int64_t, RnnActivation);
template void rnn_forward<double>(double*, double*, double*, const double*, const double*,
                                  const double*, const double*, const double*, const double*,
                                  int64_t, int64_t, int64_t, int64_t, RnnActivation);

}  // namespace fusedrnn
