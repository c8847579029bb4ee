#include "common/blas.h"
#include "common/pointwise.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "gru.h"

namespace fusedrnn {

int64_t gru_workspace_size(int64_t T, int64_t B, int64_t H) { return T * B * 4 * H; }

int64_t gru_forward_scratch_size(int64_t T, int64_t B, int64_t H, bool training) {
  const int64_t fixed = 2 * 3 * H + B * 3 * H;  // both biases, the recurrent projections of a step
  return training ? fixed : fixed + B * H + projection_chunk_steps(T, B) * B * 3 * H;
}

// x: [T,B,I]  h0: [B,H]  w_ih: [3H,I]  w_hh: [3H,H]  b_ih, b_hh: [3H]
// y: [T,B,H]  h_n: [B,H]  saved: the workspace's parts or null  scratch: gru_forward_scratch_size
template <typename T>
void gru_forward(T* y, T* h_n, GruSaved<T> saved, T* scratch, const T* x, const T* h0, const T* w_ih,
                 const T* w_hh, const T* b_ih, const T* b_hh, const int64_t* batch_sizes,
                 int64_t steps, int64_t B, int64_t I, int64_t H, bool reset_after) {
  const int64_t G = 3 * H;
  const auto& kernels = pointwise<T>();
  T* bias_ih = scratch;  // the biases, or zeros for a layer without
  T* bias_hh = bias_ih + G;
  copy_or_zero(bias_ih, b_ih, G);
  copy_or_zero(bias_hh, b_hh, G);
  T* hproj = bias_hh + G;  // [B,3H]: W_hh h (reset_after), or W_h{r,z} h [B,2H] and W_hn (r*h) [B,H]

  // One step over the n running rows. `extra` [B,H] receives hn (reset_after) or r*h.
  auto step = [&](int64_t n, T* gates, const T* h_prev, T* extra, T* h) {
    if (reset_after) {
      gemm<T>(false, true, n, G, H, T(1), h_prev, H, w_hh, H, T(0), hproj, G);
      parallel_rows(n, G, [&](int64_t b0, int64_t b1) {
        kernels.gru_forward(b1 - b0, H, bias_ih, bias_hh, gates + b0 * G, hproj + b0 * G,
                            h_prev + b0 * H, extra + b0 * H, h + b0 * H);
      });
    } else {
      T* hproj_rz = hproj;
      T* hproj_n = hproj + B * 2 * H;
      gemm<T>(false, true, n, 2 * H, H, T(1), h_prev, H, w_hh, H, T(0), hproj_rz, 2 * H);
      parallel_rows(n, G, [&](int64_t b0, int64_t b1) {
        kernels.gru_rb_forward_gates(b1 - b0, H, bias_ih, bias_hh, gates + b0 * G,
                                     hproj_rz + b0 * 2 * H, h_prev + b0 * H, extra + b0 * H);
      });
      gemm<T>(false, true, n, H, H, T(1), extra, H, w_hh + 2 * H * H, H, T(0), hproj_n, H);
      parallel_rows(n, G, [&](int64_t b0, int64_t b1) {
        kernels.gru_rb_forward_state(b1 - b0, H, bias_ih, bias_hh, gates + b0 * G,
                                     hproj_n + b0 * H, h_prev + b0 * H, h + b0 * H);
      });
    }
    zero_rows(h, n, B, H);  // rows past their length output zeros
  };

  if (saved.gates) {
    T* gates = saved.gates;
    T* extra = saved.extra;
    gemm<T>(false, true, steps * B, G, I, T(1), x, I, w_ih, I, T(0), gates, G);
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = active_rows(batch_sizes, t, B);
      step(n, gates + t * B * G, t ? y + (t - 1) * B * H : h0, extra + t * B * H, y + t * B * H);
      zero_rows(gates + t * B * G, n, B, G);
      zero_rows(extra + t * B * H, n, B, H);
    }
  } else {
    T* extra = hproj + B * G;
    T* proj = extra + B * H;
    const int64_t chunk = projection_chunk_steps(steps, B);
    for (int64_t t0 = 0; t0 < steps; t0 += chunk) {
      const int64_t n = std::min(chunk, steps - t0);
      gemm<T>(false, true, n * B, G, I, T(1), x + t0 * B * I, I, w_ih, I, T(0), proj, G);
      for (int64_t t = t0; t < t0 + n; ++t)
        step(active_rows(batch_sizes, t, B), proj + (t - t0) * B * G,
             t ? y + (t - 1) * B * H : h0, extra, y + t * B * H);
    }
  }
  if (steps)
    gather_last_steps(h_n, y, batch_sizes, steps, B, H);
  else
    copy_or_zero(h_n, h0, B * H);
}

#define FUSEDRNN_GRU_FORWARD(T)                                                                  \
  template void gru_forward<T>(T*, T*, GruSaved<T>, T*, const T*, const T*, const T*, const T*,  \
                               const T*,                                                         \
                               const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, bool);
FUSEDRNN_GRU_FORWARD(float)
FUSEDRNN_GRU_FORWARD(double)

}  // namespace fusedrnn
