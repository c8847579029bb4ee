#include "common/blas.h"
#include "common/pointwise.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"

namespace fusedrnn {

int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H) { return T * B * 5 * H; }

int64_t lstm_forward_scratch_size(int64_t T, int64_t B, int64_t H, bool training) {
  const int64_t bias = 4 * H;
  return training ? bias : bias + projection_chunk_steps(T, B) * B * 4 * H;
}

// x: [T,B,I]  h0, c0: [B,H]  w_ih: [4H,I]  w_hh: [4H,H]  b_ih, b_hh: [4H]
// y: [T,B,H]  h_n, c_n: [B,H]  workspace: [T,B,5H] or null  scratch: lstm_forward_scratch_size
template <typename T>
void lstm_forward(T* y, T* h_n, T* c_n, T* workspace, T* scratch, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                  int64_t steps, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H;
  const auto& kernels = pointwise<T>();
  T* bias = scratch;
  add_vectors(bias, b_ih, b_hh, G);

  // One step: gates += W_hh h_prev, then the fused pass (bias, nonlinearities, state update).
  auto step = [&](T* gates, const T* h_prev, const T* c_prev, T* c, T* h) {
    gemm<T>(false, true, B, G, H, T(1), h_prev, H, w_hh, H, T(1), gates, G);
    parallel_rows(B, G, [&](int64_t b0, int64_t b1) {
      kernels.lstm_forward(b1 - b0, H, bias, gates + b0 * G, c_prev + b0 * H, c + b0 * H,
                           h + b0 * H);
    });
  };

  if (workspace) {
    // Training: project every step's input with one GEMM straight into the saved gates.
    T* gates = workspace;
    T* cs = workspace + steps * B * G;
    gemm<T>(false, true, steps * B, G, I, T(1), x, I, w_ih, I, T(0), gates, G);
    for (int64_t t = 0; t < steps; ++t) {
      step(gates + t * B * G, t ? y + (t - 1) * B * H : h0, t ? cs + (t - 1) * B * H : c0,
           cs + t * B * H, y + t * B * H);
    }
    copy_or_zero(c_n, steps ? cs + (steps - 1) * B * H : c0, B * H);
  } else {
    // Inference: the projection of a few steps at a time; c is updated in place in c_n.
    T* proj = scratch + G;
    const int64_t chunk = projection_chunk_steps(steps, B);
    copy_or_zero(c_n, c0, B * H);
    for (int64_t t0 = 0; t0 < steps; t0 += chunk) {
      const int64_t n = std::min(chunk, steps - t0);
      gemm<T>(false, true, n * B, G, I, T(1), x + t0 * B * I, I, w_ih, I, T(0), proj, G);
      for (int64_t t = t0; t < t0 + n; ++t)
        step(proj + (t - t0) * B * G, t ? y + (t - 1) * B * H : h0, c_n, c_n, y + t * B * H);
    }
  }
  copy_or_zero(h_n, steps ? y + (steps - 1) * B * H : h0, B * H);
}

template void lstm_forward<float>(float*, float*, float*, float*, float*, const float*,
                                  const float*, const float*, const float*, const float*,
                                  const float*, const float*, int64_t, int64_t, int64_t, int64_t);
template void lstm_forward<double>(double*, double*, double*, double*, double*, const double*,
                                   const double*, const double*, const double*, const double*,
                                   const double*, const double*, int64_t, int64_t, int64_t,
                                   int64_t);

}  // namespace fusedrnn
