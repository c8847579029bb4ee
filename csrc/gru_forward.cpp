#include "common/blas.h"
#include "common/pointwise.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "gru.h"

namespace fusedrnn {

int64_t gru_workspace_size(int64_t T, int64_t B, int64_t H) { return T * B * 4 * H; }

int64_t gru_forward_scratch_size(int64_t T, int64_t B, int64_t H, bool training) {
  const int64_t per_step = B * 3 * H;  // the recurrent projections of one step
  return training ? per_step : per_step + B * H + projection_chunk_steps(T, B) * B * 3 * H;
}

// x: [T,B,I]  h0: [B,H]  w_ih: [3H,I]  w_hh: [3H,H]  b_ih, b_hh: [3H]
// y: [T,B,H]  h_n: [B,H]  workspace: [T,B,4H] or null  scratch: gru_forward_scratch_size
template <typename T>
void gru_forward(T* y, T* h_n, T* workspace, T* scratch, const T* x, const T* h0, const T* w_ih,
                 const T* w_hh, const T* b_ih, const T* b_hh, int64_t steps, int64_t B, int64_t I,
                 int64_t H, bool reset_after) {
  const int64_t G = 3 * H;
  const auto& kernels = pointwise<T>();
  T* hproj = scratch;  // [B,3H]: W_hh h (reset_after) or W_h{r,z} h [B,2H] then W_hn (r*h) [B,H]

  // One step. `extra` [B,H] receives hn (reset_after) or r*h (reset_before).
  auto step = [&](T* gates, const T* h_prev, T* extra, T* h) {
    if (reset_after) {
      gemm<T>(false, true, B, G, H, T(1), h_prev, H, w_hh, H, T(0), hproj, G);
      parallel_rows(B, G, [&](int64_t b0, int64_t b1) {
        kernels.gru_forward(b1 - b0, H, b_ih, b_hh, gates + b0 * G, hproj + b0 * G,
                            h_prev + b0 * H, extra + b0 * H, h + b0 * H);
      });
    } else {
      T* hproj_rz = hproj;
      T* hproj_n = hproj + B * 2 * H;
      gemm<T>(false, true, B, 2 * H, H, T(1), h_prev, H, w_hh, H, T(0), hproj_rz, 2 * H);
      parallel_rows(B, G, [&](int64_t b0, int64_t b1) {
        kernels.gru_rb_forward_gates(b1 - b0, H, b_ih, b_hh, gates + b0 * G,
                                     hproj_rz + b0 * 2 * H, h_prev + b0 * H, extra + b0 * H);
      });
      gemm<T>(false, true, B, H, H, T(1), extra, H, w_hh + 2 * H * H, H, T(0), hproj_n, H);
      parallel_rows(B, G, [&](int64_t b0, int64_t b1) {
        kernels.gru_rb_forward_state(b1 - b0, H, b_ih, b_hh, gates + b0 * G, hproj_n + b0 * H,
                                     h_prev + b0 * H, h + b0 * H);
      });
    }
  };

  if (workspace) {
    T* gates = workspace;
    T* extra = workspace + steps * B * G;
    gemm<T>(false, true, steps * B, G, I, T(1), x, I, w_ih, I, T(0), gates, G);
    for (int64_t t = 0; t < steps; ++t)
      step(gates + t * B * G, t ? y + (t - 1) * B * H : h0, extra + t * B * H, y + t * B * H);
  } else {
    T* extra = scratch + B * G;
    T* proj = extra + B * H;
    const int64_t chunk = projection_chunk_steps(steps, B);
    for (int64_t t0 = 0; t0 < steps; t0 += chunk) {
      const int64_t n = std::min(chunk, steps - t0);
      gemm<T>(false, true, n * B, G, I, T(1), x + t0 * B * I, I, w_ih, I, T(0), proj, G);
      for (int64_t t = t0; t < t0 + n; ++t)
        step(proj + (t - t0) * B * G, t ? y + (t - 1) * B * H : h0, extra, y + t * B * H);
    }
  }
  copy_or_zero(h_n, steps ? y + (steps - 1) * B * H : h0, B * H);
}

template void gru_forward<float>(float*, float*, float*, float*, const float*, const float*,
                                 const float*, const float*, const float*, const float*, int64_t,
                                 int64_t, int64_t, int64_t, bool);
template void gru_forward<double>(double*, double*, double*, double*, const double*,
                                  const double*, const double*, const double*, const double*,
                                  const double*, int64_t, int64_t, int64_t, int64_t, bool);

}  // namespace fusedrnn
