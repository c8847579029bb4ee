// The fused elementwise pass of one time step, for every cell, as a table of function pointers.
//
// csrc/isa/*.cpp compile the same kernels (csrc/*_pointwise.inc) for several instruction sets and
// fill one table each; select_isa() picks the best the CPU supports. Row buffers are dense in C
// order with row strides set by H ([rows,4H], [rows,H], ...). A call covers `rows` rows and the
// hidden units [0, width) of each (width <= H): a driver may split the batch, or the hidden units
// (passing pointers advanced by the first unit j0), across threads. Nullable arguments say so.
#pragma once
#include <cstdint>

namespace fusedrnn {

template <typename T>
struct PointwiseKernels {
  // ---- LSTM (gates i, f, g, o) ----
  // gates [rows,4H]: in W_ih x + W_hh h, out the activated gates; bias [4H] = b_ih + b_hh;
  // c_prev, c, h [rows,H] (c may alias c_prev).
  void (*lstm_forward)(int64_t rows, int64_t H, int64_t width, const T* bias, T* gates, const T* c_prev, T* c,
                       T* h);
  // dgates [rows,4H] out (pre-activation gradients); dc [rows,H] in dL/dc_t, out dL/dc_{t-1};
  // dh [rows,H] recurrent gradient in; dy [rows,H] or null; gates, c, c_prev as saved.
  void (*lstm_backward)(int64_t rows, int64_t H, int64_t width, T* dgates, T* dc, const T* dh, const T* dy,
                        const T* gates, const T* c, const T* c_prev);

  // ---- GRU, reset_after (gates r, z, n) ----
  // gates [rows,3H]: in W_ih x, out r, z, n; hproj [rows,3H] = W_hh h; hn [rows,H] out
  // W_hn h + b_hn; h [rows,H] out.
  void (*gru_forward)(int64_t rows, int64_t H, int64_t width, const T* bias_ih, const T* bias_hh, T* gates,
                      const T* hproj, const T* h_prev, T* hn, T* h);
  // dgates_x / dgates_h [rows,3H] out: gradients of W_ih x + b_ih and of W_hh h + b_hh;
  // dh [rows,H] in the recurrent gradient, out the direct part of dL/dh_{t-1} (dh_total * z).
  void (*gru_backward)(int64_t rows, int64_t H, int64_t width, T* dgates_x, T* dgates_h, T* dh, const T* dy,
                       const T* gates, const T* hn, const T* h_prev);

  // ---- GRU, reset_before (Cho et al. 2014): two passes around the second recurrent GEMM ----
  // gates [rows,3H]: in W_ih x, out r, z in columns [0,2H); hproj_rz [rows,2H] = W_h{r,z} h;
  // rh [rows,H] out r*h_prev.
  void (*gru_rb_forward_gates)(int64_t rows, int64_t H, int64_t width, const T* bias_ih, const T* bias_hh,
                               T* gates, const T* hproj_rz, const T* h_prev, T* rh);
  // gates columns [2H,3H): in W_in x, out n; hproj_n [rows,H] = W_hn (r*h); h [rows,H] out.
  void (*gru_rb_forward_state)(int64_t rows, int64_t H, int64_t width, const T* bias_ih, const T* bias_hh,
                               T* gates, const T* hproj_n, const T* h_prev, T* h);
  // dgates columns z, n out; dh in the recurrent gradient, out dh_total * z.
  void (*gru_rb_backward_state)(int64_t rows, int64_t H, int64_t width, T* dgates, T* dh, const T* dy,
                                const T* gates, const T* h_prev);
  // d_rh [rows,H] = dn_pre W_hn; dgates column r out; dh += d_rh * r.
  void (*gru_rb_backward_gates)(int64_t rows, int64_t H, int64_t width, T* dgates, T* dh, const T* d_rh,
                                const T* gates, const T* h_prev);

  // ---- RNN; index 0 = tanh, 1 = relu ----
  // h [rows,H]: in W_ih x + W_hh h, out act(... + bias); bias [H] = b_ih + b_hh.
  void (*rnn_forward[2])(int64_t rows, int64_t H, int64_t width, const T* bias, T* h);
  // dpre [rows,H] out; dh recurrent gradient in; dy or null; h the saved output.
  void (*rnn_backward[2])(int64_t rows, int64_t H, int64_t width, T* dpre, const T* dh, const T* dy, const T* h);

  // ---- softmax cross-entropy (whole rows of V classes; not per hidden unit) ----
  // logits [rows,V]; targets [rows] in [0,V) or == ignore_index; losses [rows] out (0 if ignored);
  // dlogits [rows,V] out, or null for the loss only: scale * (softmax - onehot(target)), zero rows
  // where the target is ignored.
  void (*cross_entropy_rows)(int64_t rows, int64_t V, const T* logits, const int64_t* targets,
                             int64_t ignore_index, T scale, T* dlogits, T* losses);
};

struct IsaKernels {
  const char* name;
  PointwiseKernels<float> f32;
  PointwiseKernels<double> f64;
};

const IsaKernels& isa_kernels_baseline();
const IsaKernels& isa_kernels_avx2();
const IsaKernels& isa_kernels_avx512();

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

}  // namespace fusedrnn
