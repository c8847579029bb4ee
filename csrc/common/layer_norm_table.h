// The row kernels of layer normalisation, compiled once per instruction set (csrc/isa/*.cpp
// include csrc/isa/layer_norm_kernels.inc, which compiles csrc/layer_norm_pointwise.inc), and the
// choice among them: the same instruction set as the cells' table (common/isa_table.h).
//
// A row of N values x is normalised as xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps),
// with the biased variance var = mean((x - mean)^2) (two passes over the row, as PyTorch). All
// buffers are dense in C order; [rows, N] has row stride N. Nullable arguments say so.
#pragma once
#include <cstdint>

#include "common/isa_table.h"

namespace fusedrnn {

// The parameters of one layer-normalised LSTM layer's fused step (ln_cell.h).
template <typename T>
struct LnLstmStepParams {
  const T* gamma_ih;  // [4H]: gain of LN(W_ih x)
  const T* gamma_hh;  // [4H]: gain of LN(W_hh h)
  const T* bias;      // [4H] or null (zeros)
  const T* gamma_c;   // [H]: gain of LN(c)
  const T* beta_c;    // [H] or null (zeros)
  T eps;
};

// The parameters of one layer-normalised GRU layer's fused step (ln_cell.h).
template <typename T>
struct LnGruStepParams {
  const T* gamma_ih;  // [3H]
  const T* gamma_hh;  // [3H]
  const T* b_ih;      // [3H] or null (zeros)
  const T* b_hh;      // [3H] or null (zeros)
  T eps;
};

template <typename T>
struct LayerNormKernels {
  // y = xhat * gamma + beta per row (gamma null: 1, beta null: 0); mean and rstd [rows] out
  // (either may be null). y may alias x.
  void (*forward_rows)(int64_t rows, int64_t N, const T* x, T* y, const T* gamma, const T* beta,
                       T eps, T* mean, T* rstd);
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma (gamma null: 1) and
  // xhat = (x - mean) * rstd, or xhat = x when mean is null (x then holds xhat). dx may alias dy.
  // In the same pass over each row, dgamma[j] += dy * xhat and dbeta[j] += dy ([N]; either
  // null: skipped).
  void (*backward_rows)(int64_t rows, int64_t N, const T* dy, const T* x, const T* gamma,
                        const T* mean, const T* rstd, T* dx, T* dgamma, T* dbeta);
  // Over the columns [0, width) of rows with row stride ld (pointers advanced to the first
  // column): dgamma[j] += sum_r dy[r,j] * xhat[r,j], dbeta[j] += sum_r dy[r,j] (either null:
  // skipped), xhat as backward_rows reads it (mean null: x is xhat).
  void (*param_grads)(int64_t rows, int64_t width, int64_t ld, const T* dy, const T* x,
                      const T* mean, const T* rstd, T* dgamma, T* dbeta);

  // ---- the layer-normalised LSTM's step, whole rows (gates i, f, g, o of width H) ----
  // hproj [rows,4H]: in W_hh h_prev, out its xhat; rstd_h [rows] out; xhat_x [rows,4H] the
  // normalised input projection; gates [rows,4H] out the activated gates; c_prev, c [rows,H]
  // (c may alias c_prev); chat [rows,H] out xhat of c; rstd_c [rows] out; h [rows,H] out.
  void (*lstm_forward)(int64_t rows, int64_t H, const LnLstmStepParams<T>& p, T* hproj, T* rstd_h,
                       const T* xhat_x, T* gates, const T* c_prev, T* c, T* chat, T* rstd_c, T* h);
  // dpre [rows,4H] out: the gradient of the gate pre-activations (of the sum
  // gamma_ih*xhat_x + gamma_hh*xhat_h + bias); dhproj [rows,4H] out: of W_hh h_prev; du
  // [rows,H] out: of u = gamma_c*chat + beta_c; dc [rows,H] in dL/dc_t (carried), out
  // dL/dc_{t-1}; dh [rows,H] in the carried dL/dh_t; dy [rows,H] or null; the rest as saved.
  void (*lstm_backward)(int64_t rows, int64_t H, const LnLstmStepParams<T>& p, T* dpre, T* dhproj,
                        T* du, T* dc, const T* dh, const T* dy, const T* gates, const T* c_prev,
                        const T* chat, const T* rstd_c, const T* xhat_h, const T* rstd_h);

  // ---- the layer-normalised GRU's step, whole rows (gates r, z, n of width H) ----
  // hproj [rows,3H]: in W_hh h_prev, out its xhat; rstd_h [rows] out; xhat_x [rows,3H];
  // gates [rows,3H] out r, z, n; h_prev, h [rows,H].
  void (*gru_forward)(int64_t rows, int64_t H, const LnGruStepParams<T>& p, T* hproj, T* rstd_h,
                      const T* xhat_x, T* gates, const T* h_prev, T* h);
  // d_ax, d_ah [rows,3H] out: gradients of gamma_ih*xhat_x + b_ih and of gamma_hh*xhat_h + b_hh;
  // dhproj [rows,3H] out: of W_hh h_prev; dh [rows,H] in the carried dL/dh_t, out its direct
  // part dL/dh_{t-1} = dh_total * z (the GEMM with dhproj adds the rest); dy [rows,H] or null.
  void (*gru_backward)(int64_t rows, int64_t H, const LnGruStepParams<T>& p, T* d_ax, T* d_ah,
                       T* dhproj, T* dh, const T* dy, const T* gates, const T* xhat_h,
                       const T* rstd_h, const T* h_prev);
};

struct LayerNormIsaKernels {
  LayerNormKernels<float> f32;
  LayerNormKernels<double> f64;
};

const LayerNormIsaKernels& layer_norm_kernels_baseline();
#if FUSEDRNN_X86
const LayerNormIsaKernels& layer_norm_kernels_avx2();
const LayerNormIsaKernels& layer_norm_kernels_avx512();
#endif

// The table of the instruction set in use (active_isa()).
inline const LayerNormIsaKernels& active_layer_norm_kernels() {
#if FUSEDRNN_X86
  const IsaKernels* isa = &active_isa();
  if (isa == &isa_kernels_avx512()) return layer_norm_kernels_avx512();
  if (isa == &isa_kernels_avx2()) return layer_norm_kernels_avx2();
#endif
  return layer_norm_kernels_baseline();
}

template <typename T>
const LayerNormKernels<T>& layer_norm_kernels();
template <>
inline const LayerNormKernels<float>& layer_norm_kernels<float>() {
  return active_layer_norm_kernels().f32;
}
template <>
inline const LayerNormKernels<double>& layer_norm_kernels<double>() {
  return active_layer_norm_kernels().f64;
}

}  // namespace fusedrnn
