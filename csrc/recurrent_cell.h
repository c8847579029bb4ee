// What every recurrent cell's kernel takes: one layer, one direction, over a whole sequence
// (lstm.h, gru.h and rnn.h give each cell's equations and workspace; docs/kernels.md the
// contract). One arguments struct per pass, the same for the three cells, so that the bindings
// and the layer stack fill it by name and the kernels read it by name.
//
// Sizes: T steps, batch B, input I, hidden H, LSTM projection P (0: none), R = P ? P : H,
// G = gates_of(cell) * H. All arrays are dense, C order, of one dtype T (float or double).
// batch_sizes [T] (null: all B rows every step): rows [0, batch_sizes[t]) run at step t, the batch
// sorted longest first; the other rows' y and workspace entries are zero at that step, and h_n /
// c_n hold each row's state after its own last step.
// The caller owns all memory: the workspace (saved by a training forward for backward) and the
// scratch (need not survive a call) are sized by the cell's *_workspace_size and *_scratch_size.
// Accumulation: parameter gradients +=, activation gradients =. Null bias gradients are skipped.
#pragma once
#include <cstdint>

#include "common/step_gemm.h"

namespace fusedrnn {

enum class CellKind : int { lstm = 0, gru = 1, rnn = 2 };

// The gate blocks of a cell's weights: w_ih is [gates_of(cell)*H, I] (LSTM i,f,g,o; GRU r,z,n;
// the Elman RNN one block).
constexpr int64_t gates_of(CellKind cell) {
  return cell == CellKind::lstm ? 4 : cell == CellKind::gru ? 3 : 1;
}

enum class RnnActivation : int { tanh = 0, relu = 1 };

// The activation functions of ONNX's LSTM / GRU / RNN operators (their `activations`), with
// ONNX's definitions: affine a*x + b, leaky_relu x < 0 ? a*x : x, thresholded_relu x > a ? x : 0,
// scaled_tanh a*tanh(b*x), hard_sigmoid clamp(a*x + b, 0, 1), elu x < 0 ? a*(exp(x) - 1) : x,
// softsign x/(1 + |x|), softplus log(1 + exp(x)). The order is fusedrnn/_cell_options.py's.
enum class Activation : int {
  sigmoid = 0,
  tanh,
  relu,
  affine,
  leaky_relu,
  thresholded_relu,
  scaled_tanh,
  hard_sigmoid,
  elu,
  softsign,
  softplus
};
struct ActivationFn {
  Activation kind = Activation::sigmoid;
  double alpha = 0, beta = 0;
};

// Zoneout (Krueger et al. 2016) and variational recurrent dropout (Gal and Ghahramani 2016) of
// the LSTM and GRU (recurrent_noise.h has the formulas; docs/layers.md). Their masks are drawn by
// common/counter_rng.h from (seed, stream, step, row, unit), so backward redraws them.
struct RecurrentNoise {
  double zoneout_h = 0;          // P(a unit of h keeps its previous value), in [0, 1)
  double zoneout_c = 0;          // the same for the LSTM's c
  double recurrent_dropout = 0;  // P(a unit of h_{t-1} is dropped where it enters W_hh), [0, 1)
  bool sample = false;           // training: masks drawn; eval: zoneout's expectation, no dropout
  uint64_t seed = 0;             // of the whole call
  int64_t stream = 0;            // layer * directions + direction (set by the layer stack)
  int64_t first_step = 0;        // the step of the sequence where the call starts
  const int64_t* row_ids = nullptr;  // [B]: the caller's row of each (length-sorted) row; null: b
  bool zoneout() const { return zoneout_h > 0 || zoneout_c > 0; }
  bool dropout() const { return sample && recurrent_dropout > 0; }
  bool any() const { return zoneout() || dropout(); }
};

// ONNX's attributes beyond PyTorch's cells (docs/onnx.md). Not enabled: the cell is PyTorch's,
// through its own fused passes, and nothing below is read. Enabled: one generic pass per cell
// that applies them, and the workspace saves the gate pre-activations (bias and peepholes added,
// before clipping) instead of the activated gates, from which backward recomputes them; the
// RNN then saves its pre-activations [T,B,H] too.
struct CellOptions {
  bool enabled = false;
  // LSTM: f (gates i, f, o), g (cell input), h (of the cell state); GRU: f (r, z), g (n);
  // RNN: f. Defaults: PyTorch's (sigmoid, tanh, tanh).
  ActivationFn act[3] = {{Activation::sigmoid}, {Activation::tanh}, {Activation::tanh}};
  double clip = 0;            // > 0: every gate pre-activation clipped to [-clip, clip]
  bool input_forget = false;  // LSTM: f = 1 - i (the forget gate's weights are unused)
  RecurrentNoise noise;       // zoneout and recurrent dropout (they need enabled)
};

// The sizes of one pass, and the variant of the cell.
struct CellShape {
  int64_t steps = 0;                        // T
  int64_t batch = 0;                        // B
  int64_t input = 0;                        // I
  int64_t hidden = 0;                       // H
  int64_t proj = 0;                         // P: LSTM only, 0 = no projection
  bool reset_after = true;                  // GRU: PyTorch's form (true) or Cho 2014's (false)
  RnnActivation act = RnnActivation::tanh;  // Elman RNN
  CellOptions options;                      // ONNX's attributes (not enabled: none)
  int64_t out() const { return proj ? proj : hidden; }  // R
};

// An inference's 16-bit copy of one layer and direction's weight matrices (weights_dtype, float
// layers only): each packed once ahead, by pack_half_panels (common/step_gemm.h) for the panel
// width of the active instruction set or, bfloat16 where AMX is active, by pack_amx_panels
// (common/amx.h), which the kernels then multiply in place of w_ih, w_hh and w_hr; the biases
// stay float. Each matrix has one of its two pointers.
struct HalfLayerWeights {
  HalfFormat format = HalfFormat::float16;
  const uint16_t* w_ih = nullptr;  // W_ih^T: K = I, blocks = gates, cols = H
  const uint16_t* w_hh = nullptr;  // W_hh^T: K = R, blocks = gates, cols = H
  const uint16_t* w_hr = nullptr;  // W_hr^T: K = H, one block of P columns; null without
  // The same three in AMX's panels (bfloat16 packed while AMX was active), or null
  const uint16_t* w_ih_amx = nullptr;
  const uint16_t* w_hh_amx = nullptr;
  const uint16_t* w_hr_amx = nullptr;
};

template <typename T>
struct LayerWeights {  // one layer, one direction
  const T* w_ih;       // [G,I]
  const T* w_hh;       // [G,R]
  const T* b_ih;       // [G] or null (zeros)
  const T* b_hh;       // [G] or null (zeros)
  const T* w_hr;       // [P,H]; null without a projection

  // LSTM peepholes [3H] p_i, p_f, p_o, or null (none); they need options.enabled
  const T* peephole = nullptr;
  // inference only, T = float: 16-bit weight matrices multiplied instead of w_ih, w_hh, w_hr
  const HalfLayerWeights* half = nullptr;
};

// Accumulated into (+=). A null array is a gradient not wanted (a parameter without one, or one
// that is frozen): nothing computes it, so a backward without dW_ih and dW_hh skips their GEMMs.
template <typename T>
struct LayerGrads {
  T* dw_ih;  // [G,I] or null
  T* dw_hh;  // [G,R] or null
  T* db_ih;  // [G] or null
  T* db_hh;  // [G] or null
  T* dw_hr;  // [P,H]; null without a projection

  T* dpeephole = nullptr;  // [3H] with peepholes
  // The arrays hold nothing yet (the binding allocated them for this call): the backward sets
  // them (=) instead of adding, which saves zero-filling them first (8 MiB for an LSTMCell(512)).
  // Only for a call with T*B > 0, whose backward writes every element.
  bool fresh = false;

  bool any_wanted() const { return dw_ih || dw_hh || db_ih || db_hh || dw_hr || dpeephole; }
};

template <typename T>
struct CellForwardArgs {
  // outputs
  T* y = nullptr;    // [T,B,R]
  T* h_n = nullptr;  // [B,R]
  T* c_n = nullptr;  // [B,H] (LSTM; null for the others)
  // inputs
  const T* x = nullptr;                  // [T,B,I]
  const T* h0 = nullptr;                 // [B,R]
  const T* c0 = nullptr;                 // [B,H] (LSTM; null for the others)
  LayerWeights<T> w{};                   // biases null: zeros; w_hr only with a projection
  const int64_t* batch_sizes = nullptr;  // [T] or null
  // saved and scratch
  T* workspace = nullptr;  // [<cell>_workspace_size(T, ...)]; null = inference, nothing saved
  T* scratch = nullptr;    // [<cell>_forward_scratch_size(shape, training)]
  // sizes
  CellShape shape;
};

// Backward of steps [first_step, first_step + shape.steps) of a sequence whose training forward
// saved `workspace` for saved_steps >= first_step + shape.steps steps (a whole sequence:
// first_step = 0, saved_steps = shape.steps). The sequences dx, dy, x, y and batch_sizes start at
// step first_step; h0 / c0 are the states entering it, dh_n / dc_n the gradients leaving its last
// step. dh0 / dc0 carry the state gradients backwards in time: rows past their length at a step
// are not touched, so dh_n / dc_n reach each row's last step.
template <typename T>
struct CellBackwardArgs {
  // outputs
  T* dx = nullptr;    // [T,B,I] (=); null: not computed
  T* dh0 = nullptr;   // [B,R] (=)
  T* dc0 = nullptr;   // [B,H] (=) (LSTM; null for the others)
  LayerGrads<T> g{};  // (+=)
  // inputs
  const T* dy = nullptr;                 // [T,B,R] or null (zeros)
  const T* dh_n = nullptr;               // [B,R] or null (zeros)
  const T* dc_n = nullptr;               // [B,H] or null (zeros) (LSTM)
  const T* x = nullptr;                  // [T,B,I]
  const T* h0 = nullptr;                 // [B,R]
  const T* c0 = nullptr;                 // [B,H] (LSTM; null for the others)
  LayerWeights<T> w{};                   // the biases are not read
  const T* y = nullptr;                  // [T,B,R]: the forward's output
  const int64_t* batch_sizes = nullptr;  // [T] or null
  // saved and scratch
  const T* workspace = nullptr;  // [<cell>_workspace_size(saved_steps, ...)]
  int64_t saved_steps = 0;
  int64_t first_step = 0;
  T* scratch = nullptr;  // [<cell>_backward_scratch_size(shape)]
  // sizes
  CellShape shape;
};

// The three cells through one call each (recurrent_cell.cpp): the layer stack and the bindings.
int64_t cell_workspace_size(CellKind cell, const CellShape& s);  // 0 for the RNN
int64_t cell_forward_scratch_size(CellKind cell, const CellShape& s, bool training);
int64_t cell_backward_scratch_size(CellKind cell, const CellShape& s);
template <typename T>
void cell_forward(CellKind cell, const CellForwardArgs<T>& a);
template <typename T>
void cell_backward(CellKind cell, const CellBackwardArgs<T>& a);

}  // namespace fusedrnn
