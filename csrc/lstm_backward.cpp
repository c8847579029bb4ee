#include "common/blas.h"
#include "common/pointwise.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"

namespace fusedrnn {

int64_t lstm_backward_scratch_size(int64_t T, int64_t B, int64_t H) { return T * B * 4 * H; }

// dy: [T,B,H] or null  dh_n, dc_n: [B,H] or null  x: [T,B,I]  h0, c0: [B,H]
// w_ih: [4H,I]  w_hh: [4H,H]  y: [T,B,H]  workspace: gates [T,B,4H] then c [T,B,H]
// dx: [T,B,I] (=)  dh0, dc0: [B,H] (=)  dw_ih, dw_hh, db_ih, db_hh (+=)  scratch: [T,B,4H]
template <typename T>
void lstm_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch,
                   const T* dy, const T* dh_n, const T* dc_n, const T* x, const T* h0,
                   const T* c0, const T* w_ih, const T* w_hh, const T* y, const T* workspace,
                   int64_t steps, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H;
  const auto& kernels = pointwise<T>();
  const T* gates = workspace;
  const T* cs = workspace + steps * B * G;
  T* dgates = scratch;

  // dh0 and dc0 carry the state gradients backwards in time and end as dL/dh0, dL/dc0.
  copy_or_zero(dh0, dh_n, B * H);
  copy_or_zero(dc0, dc_n, B * H);
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* dg = dgates + t * B * G;
    const T* c_prev = t ? cs + (t - 1) * B * H : c0;
    const T* dy_t = dy ? dy + t * B * H : nullptr;
    parallel_rows(B, G, [&](int64_t b0, int64_t b1) {
      const int64_t s = b0 * H;
      kernels.lstm_backward(b1 - b0, H, dg + b0 * G, dc0 + s, dh0 + s, dy_t ? dy_t + s : nullptr,
                            gates + t * B * G + b0 * G, cs + t * B * H + s, c_prev + s);
    });
    // forward: gates += h_prev W_hh^T  ->  dh_prev = dgates W_hh
    gemm<T>(false, false, B, H, G, T(1), dg, G, w_hh, H, T(0), dh0, H);
  }

  // Everything that does not recur, over all steps at once.
  // forward: gates = x W_ih^T + b_ih + h_prev W_hh^T + b_hh
  gemm<T>(false, false, steps * B, I, G, T(1), dgates, G, w_ih, I, T(0), dx, I);
  gemm<T>(true, false, G, I, steps * B, T(1), dgates, G, x, I, T(1), dw_ih, I);
  add_recurrent_weight_grad(dw_hh, H, dgates, G, G, y, h0, steps, B, H);
  add_column_sums(db_ih, dgates, steps * B, G, G);
  add_column_sums(db_hh, dgates, steps * B, G, G);
}

template void lstm_backward<float>(float*, float*, float*, float*, float*, float*, float*, float*,
                                   const float*, const float*, const float*, const float*,
                                   const float*, const float*, const float*, const float*,
                                   const float*, const float*, int64_t, int64_t, int64_t,
                                   int64_t);
template void lstm_backward<double>(double*, double*, double*, double*, double*, double*, double*,
                                    double*, const double*, const double*, const double*,
                                    const double*, const double*, const double*, const double*,
                                    const double*, const double*, const double*, int64_t,
                                    int64_t, int64_t, int64_t);

}  // namespace fusedrnn
