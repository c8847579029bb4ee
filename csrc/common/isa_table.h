// The table of the kernels compiled once per instruction set (ISA), and the choice among them.
//
// The fused elementwise pass of one time step for every cell, attention's score tiles and the step
// GEMM, as tables of function pointers: csrc/isa/*.cpp compile the same kernels (csrc/*.inc) for
// several instruction sets and fill one table each; select_isa() picks the best the CPU supports.
// Row buffers of the cells' passes are dense in C order with row strides set by H ([rows,4H],
// [rows,H], ...). A call covers `rows` rows and the hidden units [0, width) of each (width <= H):
// a driver may split the batch, or the hidden units (passing pointers advanced by the first unit
// j0), across threads. Nullable arguments say so.
#pragma once
#include <cstdint>

#include "common/step_gemm.h"
#include "recurrent_cell.h"

namespace fusedrnn {

template <typename T>
struct PointwiseKernels {
  // ---- LSTM (gates i, f, g, o) ----
  // gates [rows,4H]: in W_ih x + W_hh h, out the activated gates; bias [4H] = b_ih + b_hh;
  // c_prev, c, h [rows,H] (c may alias c_prev).
  void (*lstm_forward)(int64_t rows, int64_t H, int64_t width, const T* bias, T* gates,
                       const T* c_prev, T* c, T* h);
  // dgates [rows,4H] out (pre-activation gradients); dc [rows,H] in dL/dc_t, out dL/dc_{t-1};
  // dh [rows,H] recurrent gradient in; dy [rows,H] or null; gates, c, c_prev as saved.
  void (*lstm_backward)(int64_t rows, int64_t H, int64_t width, T* dgates, T* dc, const T* dh,
                        const T* dy, const T* gates, const T* c, const T* c_prev);

  // ---- GRU, reset_after (gates r, z, n) ----
  // gates [rows,3H]: in W_ih x, out r, z, n; hproj [rows,3H] = W_hh h; hn [rows,H] out
  // W_hn h + b_hn; h [rows,H] out.
  void (*gru_forward)(int64_t rows, int64_t H, int64_t width, const T* bias_ih, const T* bias_hh,
                      T* gates, const T* hproj, const T* h_prev, T* hn, T* h);
  // dgates_x / dgates_h [rows,3H] out: gradients of W_ih x + b_ih and of W_hh h + b_hh;
  // dh [rows,H] in the recurrent gradient, out the direct part of dL/dh_{t-1} (dh_total * z).
  void (*gru_backward)(int64_t rows, int64_t H, int64_t width, T* dgates_x, T* dgates_h, T* dh,
                       const T* dy, const T* gates, const T* hn, const T* h_prev);

  // ---- GRU, reset_before (Cho et al. 2014): two passes around the second recurrent GEMM ----
  // gates [rows,3H]: in W_ih x, out r, z in columns [0,2H); hproj_rz [rows,2H] = W_h{r,z} h;
  // rh [rows,H] out r*h_prev.
  void (*gru_rb_forward_gates)(int64_t rows, int64_t H, int64_t width, const T* bias_ih,
                               const T* bias_hh, T* gates, const T* hproj_rz, const T* h_prev,
                               T* rh);
  // gates columns [2H,3H): in W_in x, out n; hproj_n [rows,H] = W_hn (r*h); h [rows,H] out.
  void (*gru_rb_forward_state)(int64_t rows, int64_t H, int64_t width, const T* bias_ih,
                               const T* bias_hh, T* gates, const T* hproj_n, const T* h_prev, T* h);
  // dgates columns z, n out; dh in the recurrent gradient, out dh_total * z.
  void (*gru_rb_backward_state)(int64_t rows, int64_t H, int64_t width, T* dgates, T* dh,
                                const T* dy, const T* gates, const T* h_prev);
  // d_rh [rows,H] = dn_pre W_hn; dgates column r out; dh += d_rh * r.
  void (*gru_rb_backward_gates)(int64_t rows, int64_t H, int64_t width, T* dgates, T* dh,
                                const T* d_rh, const T* gates, const T* h_prev);

  // ---- RNN; index 0 = tanh, 1 = relu ----
  // h [rows,H]: in W_ih x + W_hh h, out act(... + bias); bias [H] = b_ih + b_hh.
  void (*rnn_forward[2])(int64_t rows, int64_t H, int64_t width, const T* bias, T* h);
  // dpre [rows,H] out; dh recurrent gradient in; dy or null; h the saved output.
  void (*rnn_backward[2])(int64_t rows, int64_t H, int64_t width, T* dpre, const T* dh, const T* dy,
                          const T* h);

  // ---- the cells with ONNX's options (CellOptions; csrc/cell_options_pointwise.inc) ----
  // As the passes above, but `gates` hold the pre-activations (bias and peepholes added, not
  // clipped) on return from a forward and as backward reads them. LSTM: peephole [3H] p_i, p_f,
  // p_o, or null.
  void (*lstm_forward_options)(const CellOptions& opt, int64_t rows, int64_t H, int64_t width,
                               const T* bias, const T* peephole, T* gates, const T* c_prev, T* c,
                               T* h);
  void (*lstm_backward_options)(const CellOptions& opt, int64_t rows, int64_t H, int64_t width,
                                const T* peephole, T* dgates, T* dc, const T* dh, const T* dy,
                                const T* gates, const T* c, const T* c_prev);
  void (*gru_forward_options)(const CellOptions& opt, int64_t rows, int64_t H, int64_t width,
                              const T* bias_ih, const T* bias_hh, T* gates, const T* hproj,
                              const T* h_prev, T* hn, T* h);
  void (*gru_backward_options)(const CellOptions& opt, int64_t rows, int64_t H, int64_t width,
                               T* dgates_x, T* dgates_h, T* dh, const T* dy, const T* gates,
                               const T* hn, const T* h_prev);
  void (*gru_rb_forward_gates_options)(const CellOptions& opt, int64_t rows, int64_t H,
                                       int64_t width, const T* bias_ih, const T* bias_hh, T* gates,
                                       const T* hproj_rz, const T* h_prev, T* rh);
  void (*gru_rb_forward_state_options)(const CellOptions& opt, int64_t rows, int64_t H,
                                       int64_t width, const T* bias_ih, const T* bias_hh, T* gates,
                                       const T* hproj_n, const T* h_prev, T* h);
  void (*gru_rb_backward_state_options)(const CellOptions& opt, int64_t rows, int64_t H,
                                        int64_t width, T* dgates, T* dh, const T* dy,
                                        const T* gates, const T* h_prev);
  void (*gru_rb_backward_gates_options)(const CellOptions& opt, int64_t rows, int64_t H,
                                        int64_t width, T* dgates, T* dh, const T* d_rh,
                                        const T* gates, const T* h_prev);
  // RNN: pre [rows,H] out the pre-activations (null: not saved); backward reads them.
  void (*rnn_forward_options)(const CellOptions& opt, int64_t rows, int64_t H, int64_t width,
                              const T* bias, T* h, T* pre);
  void (*rnn_backward_options)(const CellOptions& opt, int64_t rows, int64_t H, int64_t width,
                               T* dpre, const T* dh, const T* dy, const T* pre);

  // ---- softmax cross-entropy (whole rows of V classes; not per hidden unit) ----
  // logits [rows,V]; targets [rows] in [0,V) or == ignore_index; losses [rows] out (0 if ignored);
  // dlogits [rows,V] out, or null for the loss only: scale * (softmax - onehot(target)), zero rows
  // where the target is ignored.
  void (*cross_entropy_rows)(int64_t rows, int64_t V, const T* logits, const int64_t* targets,
                             int64_t ignore_index, T scale, T* dlogits, T* losses);
};

// One score tile of attention (csrc/attention.h): rows x cols scores, row stride ld, for the
// query rows [i0, i0+rows) and keys [j0, j0+cols) of one (batch item, head).
template <typename T>
struct AttentionTile {
  int64_t rows = 0, cols = 0, ld = 0;
  T* s = nullptr;       // forward: in scale*q.k, out p*z (z = dropout factor); backward: out p
  T* p_drop = nullptr;  // backward with dropout: out p*z
  T* dp = nullptr;      // backward: in dP = d_out . v, out dS = p * (dP*z - delta)
  // mask: the element (i0, j0) of this (batch item, head); strides as AttentionMask
  int mask_kind = 0;  // MaskKind: 0 none, 1 boolean (bytes), 2 additive (T)
  const void* mask = nullptr;
  int64_t mask_row_stride = 0, mask_col_stride = 0;
  bool causal = false;
  int64_t causal_offset = 0;  // i0 + d - j0: row r sees the columns c <= causal_offset + r
  bool windowed = false;
  int64_t window_offset = 0;  // i0 + d - window + 1 - j0: row r sees the columns c >= it + r
  // soft-capping: c = softcap * tanh(c / softcap) before the mask; backward keeps its slope
  // 1 - tanh^2 in `slope` [rows, ld]
  bool capped = false;
  T softcap = 0;
  T* slope = nullptr;
  // forward: running max m, running sum l of each row (in/out); o [rows, ev] (row stride ldo) is
  // rescaled by exp(m_old - m_new)
  T* m = nullptr;
  T* l = nullptr;
  T* o = nullptr;
  int64_t ev = 0, ldo = 0;
  // backward: lse and delta = rowsum(d_out * out) of each row
  const T* lse = nullptr;
  const T* delta = nullptr;
  // dropout (keep iff hash >= threshold; kept entries scaled by keep_scale); row_keys [rows]
  bool dropout = false;
  const uint32_t* row_keys = nullptr;
  uint64_t threshold = 0;
  T keep_scale = 1;
  int64_t j0 = 0;
};

template <typename T>
struct AttentionKernels {
  // Masks the scores (s), updates m and l, rescales o, writes p*z into s.
  void (*forward_tile)(const AttentionTile<T>& t);
  // A tile of one query row: s[j] = alpha * q . k[j*ldk ...] over n keys of E features.
  void (*row_scores)(int64_t n, int64_t E, T alpha, const T* q, const T* k, int64_t ldk, T* s);
  // Its o[e] += sum_j p[j] * v[j*ldv + e] over n keys of Ev features.
  void (*row_values)(int64_t n, int64_t Ev, const T* p, const T* v, int64_t ldv, T* o);
  // p = exp(masked s - lse) into s (and p*z into p_drop with dropout).
  void (*backward_probs)(const AttentionTile<T>& t);
  // dS = p * (dP*z - delta) (times the soft-cap slope) into dp.
  void (*backward_ds)(const AttentionTile<T>& t);
  // Additive attention, one query row over S keys: e[s] = w_v . tanh(qp + kp[s,:]) for the keys
  // whose key_mask is nonzero (or every key when null), -inf for the others. kp [S,A].
  void (*additive_scores)(int64_t S, int64_t A, T* e, const T* qp, const T* kp, const T* w_v,
                          const uint8_t* key_mask);
  // Its backward for one query row: with a = tanh(qp + kp[s,:]) and g = de[s] * w_v * (1 - a^2),
  // dqp = sum_s g (=), dkp[s,:] += g, dw_v += sum_s de[s] * a. Keys with de[s] == 0 are skipped.
  void (*additive_backward)(int64_t S, int64_t A, T* dqp, T* dkp, T* dw_v, const T* de, const T* qp,
                            const T* kp, const T* w_v);
};

struct IsaKernels {
  const char* name;
  PointwiseKernels<float> f32;
  PointwiseKernels<double> f64;
  AttentionKernels<float> attention_f32;
  AttentionKernels<double> attention_f64;
  StepGemmKernels<float> step_gemm_f32;
  StepGemmKernels<double> step_gemm_f64;
  HalfStepGemmKernels step_gemm_half;  // float with 16-bit weights, panels as step_gemm_f32's
};

// The x86 instruction sets beyond the baseline are compiled on x86 only (csrc/isa/avx*.cpp). Other
// CPUs (aarch64: Apple silicon, Graviton) run the portable baseline, whose 16-byte generic vectors
// the compiler maps to their vector unit (NEON).
#if defined(__x86_64__) || defined(__i386__)
#define FUSEDRNN_X86 1
#else
#define FUSEDRNN_X86 0
#endif

const IsaKernels& isa_kernels_baseline();
#if FUSEDRNN_X86
const IsaKernels& isa_kernels_avx2();
const IsaKernels& isa_kernels_avx512();
#endif

// The table in use: the best the CPU supports, unless select_isa() chose another.
const IsaKernels& active_isa();
// Selects by name ("baseline", "avx2", "avx512"); false if unknown or unsupported by the CPU.
bool select_isa(const char* name);
bool isa_supported(const char* name);

template <typename T>
const PointwiseKernels<T>& pointwise();
template <>
inline const PointwiseKernels<float>& pointwise<float>() {
  return active_isa().f32;
}
template <>
inline const PointwiseKernels<double>& pointwise<double>() {
  return active_isa().f64;
}

template <typename T>
const AttentionKernels<T>& attention_kernels();
template <>
inline const AttentionKernels<float>& attention_kernels<float>() {
  return active_isa().attention_f32;
}
template <>
inline const AttentionKernels<double>& attention_kernels<double>() {
  return active_isa().attention_f64;
}

template <typename T>
const StepGemmKernels<T>& step_gemm_kernels();
template <>
inline const StepGemmKernels<float>& step_gemm_kernels<float>() {
  return active_isa().step_gemm_f32;
}
template <>
inline const StepGemmKernels<double>& step_gemm_kernels<double>() {
  return active_isa().step_gemm_f64;
}
inline HalfMultiply half_step_gemm(HalfFormat format) {
  return active_isa().step_gemm_half.multiply[static_cast<int>(format)];
}

}  // namespace fusedrnn
