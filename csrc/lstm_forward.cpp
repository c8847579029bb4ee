#include "common/blas.h"
#include "common/pointwise.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"

namespace fusedrnn {

int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H, int64_t P) {
  return T * B * (P ? 6 : 5) * H;
}

int64_t lstm_forward_scratch_size(int64_t T, int64_t B, int64_t H, int64_t P, bool training) {
  const int64_t bias = 4 * H;
  if (training) return bias;
  return bias + (P ? B * H : 0) + projection_chunk_steps(T, B) * B * 4 * H;
}

// x: [T,B,I]  h0: [B,R]  c0: [B,H]  w_ih: [4H,I]  w_hh: [4H,R]  b_ih, b_hh: [4H] or null
// w_hr: [P,H] or null  batch_sizes: [T] or null
// y: [T,B,R]  h_n: [B,R]  c_n: [B,H]  saved: the workspace's parts or null  scratch: see above
template <typename T>
void lstm_forward(T* y, T* h_n, T* c_n, LstmSaved<T> saved, T* scratch, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                  const T* w_hr, const int64_t* batch_sizes, int64_t steps, int64_t B, int64_t I,
                  int64_t H, int64_t P) {
  const int64_t G = 4 * H, R = P ? P : H;
  const auto& kernels = pointwise<T>();
  T* bias = scratch;
  for (int64_t j = 0; j < G; ++j) bias[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));

  // One step over the n running rows: gates += W_hh h_prev, then the fused pass (bias,
  // nonlinearities, state update); with a projection, h = W_hr m after the pass.
  auto step = [&](int64_t n, T* gates, const T* h_prev, const T* c_prev, T* c, T* m, T* h) {
    gemm<T>(false, true, n, G, R, T(1), h_prev, R, w_hh, R, T(1), gates, G);
    T* cell_out = P ? m : h;
    parallel_rows(n, G, [&](int64_t b0, int64_t b1) {
      kernels.lstm_forward(b1 - b0, H, bias, gates + b0 * G, c_prev + b0 * H, c + b0 * H,
                           cell_out + b0 * H);
    });
    if (P) gemm<T>(false, true, n, P, H, T(1), m, H, w_hr, H, T(0), h, P);
    zero_rows(h, n, B, R);  // rows past their length output zeros
  };

  if (saved.gates) {
    // Training: project every step's input with one GEMM straight into the saved gates.
    T* gates = saved.gates;
    T* cs = saved.c;
    T* ms = saved.m;  // only with a projection
    gemm<T>(false, true, steps * B, G, I, T(1), x, I, w_ih, I, T(0), gates, G);
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = active_rows(batch_sizes, t, B);
      T* g = gates + t * B * G;
      T* c = cs + t * B * H;
      T* m = P ? ms + t * B * H : nullptr;
      step(n, g, t ? y + (t - 1) * B * R : h0, t ? cs + (t - 1) * B * H : c0, c, m, y + t * B * R);
      zero_rows(g, n, B, G);
      zero_rows(c, n, B, H);
      if (P) zero_rows(m, n, B, H);
    }
    if (steps)
      gather_last_steps(c_n, cs, batch_sizes, steps, B, H);
    else
      copy_or_zero(c_n, c0, B * H);
  } else {
    // Inference: the projection of a few steps at a time; c is updated in place in c_n, so
    // rows that stopped keep their last state.
    T* m = P ? scratch + G : nullptr;
    T* proj = scratch + G + (P ? B * H : 0);
    const int64_t chunk = projection_chunk_steps(steps, B);
    copy_or_zero(c_n, c0, B * H);
    for (int64_t t0 = 0; t0 < steps; t0 += chunk) {
      const int64_t n_steps = std::min(chunk, steps - t0);
      gemm<T>(false, true, n_steps * B, G, I, T(1), x + t0 * B * I, I, w_ih, I, T(0), proj, G);
      for (int64_t t = t0; t < t0 + n_steps; ++t)
        step(active_rows(batch_sizes, t, B), proj + (t - t0) * B * G,
             t ? y + (t - 1) * B * R : h0, c_n, c_n, m, y + t * B * R);
    }
  }
  if (steps)
    gather_last_steps(h_n, y, batch_sizes, steps, B, R);
  else
    copy_or_zero(h_n, h0, B * R);
}

#define FUSEDRNN_LSTM_FORWARD(T)                                                                \
  template void lstm_forward<T>(T*, T*, T*, LstmSaved<T>, T*, const T*, const T*, const T*,      \
                                const T*, const T*, const T*, const T*, const T*, const int64_t*, \
                                int64_t, int64_t, int64_t, int64_t, int64_t);
FUSEDRNN_LSTM_FORWARD(float)
FUSEDRNN_LSTM_FORWARD(double)

}  // namespace fusedrnn
