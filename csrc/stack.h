// A stack of recurrent layers, one or two directions each, over a length-sorted batch: what
// fusedrnn.LSTM / GRU / RNN run in one call (contract: docs/kernels.md, "Layer stacks").
//
// The caller sorts the batch by length, longest first (the Python wrapper does, and unsorts the
// results); here `batch_sizes` [T] says how many rows run at each step and `lengths` [B] each
// row's length (both null: every row runs every step). Layer k = l*D + d reads the output of
// layer l-1 (both directions concatenated, forward first, times the dropout mask of l-1); the
// reverse direction runs each row from its own last step back to step 0.
//
// Shapes (T, B, input I, hidden H, projection P (LSTM, 0: none), R = P ? P : H, D directions):
//   x [T,B,I]  h0 [L*D,B,R]  c0 [L*D,B,H] (LSTM)  y [T,B,D*R]  h_n [L*D,B,R]  c_n [L*D,B,H]
//   dropout_masks [L-1,T,B,D*R] or null
//   saved [stack_saved_size]: per layer and direction the cell's workspace and its output in
//   processing order, then every layer's input after the first.
#pragma once
#include <cstdint>

#include "recurrent_cell.h"

namespace fusedrnn {

// The cell's sizes and variant (input: the first layer's), and the stack's.
struct StackShape : CellShape {
  CellKind cell = CellKind::lstm;
  int64_t layers = 1;
  int64_t directions = 1;  // D
  int64_t gates() const { return gates_of(cell); }
  int64_t layer_input(int64_t layer) const { return layer ? directions * out() : input; }
  CellOptions reverse_options;  // of direction 1 (ONNX's activations may differ per direction)
  // The cell of layer `layer`, direction `direction` over `steps` steps.
  CellShape layer_cell(int64_t layer, int64_t steps, int64_t direction = 0) const {
    CellShape c = *this;
    c.input = layer_input(layer);
    c.steps = steps;
    if (direction == 1) c.options = reverse_options;
    c.options.noise.stream = layer * directions + direction;
    return c;
  }
};

int64_t stack_saved_size(const StackShape& s);
int64_t stack_forward_scratch_size(const StackShape& s, bool training);
int64_t stack_backward_scratch_size(const StackShape& s);

// The inputs a stack's forward and its backward both read.
template <typename T>
struct StackInputs {
  const T* x = nullptr;                      // [T,B,I]
  const T* h0 = nullptr;                     // [L*D,B,R]
  const T* c0 = nullptr;                     // [L*D,B,H] (LSTM; null for the others)
  const LayerWeights<T>* weights = nullptr;  // [L*D]
  const T* dropout_masks = nullptr;          // [L-1,T,B,D*R] or null
  const int64_t* batch_sizes = nullptr;      // [T] or null (with lengths)
  const int64_t* lengths = nullptr;          // [B] or null (with batch_sizes)
};

template <typename T>
struct StackForwardArgs {
  // outputs
  T* y = nullptr;    // [T,B,D*R]
  T* h_n = nullptr;  // [L*D,B,R]
  T* c_n = nullptr;  // [L*D,B,H] (LSTM; null for the others)
  // inputs
  StackInputs<T> in;
  // saved and scratch
  T* saved = nullptr;    // [stack_saved_size]; null = inference, nothing saved
  T* scratch = nullptr;  // [stack_forward_scratch_size]
  // sizes
  StackShape shape;
};

// truncate = 0: full backpropagation through time. Otherwise TBPTT(k1 = stride, k2 = truncate) of
// Williams and Peng (1990), one direction only: the steps are cut into chunks of k1 (the last may
// be shorter); the gradient of a chunk's outputs flows back through the chunk and at most k2 - k1
// steps before it, in every layer; the states entering that span are constants, so only spans
// that start at step 0 reach h0 / c0. dh_n / dc_n enter at each row's own last step, with the
// chunk that holds it. Input and parameter gradients add up over the chunks.
template <typename T>
struct StackBackwardArgs {
  // outputs
  T* dx = nullptr;                       // [T,B,I] (=); null: not computed
  T* dh0 = nullptr;                      // [L*D,B,R] (=)
  T* dc0 = nullptr;                      // [L*D,B,H] (=) (LSTM; null for the others)
  const LayerGrads<T>* grads = nullptr;  // [L*D] (+=)
  // inputs
  const T* dy = nullptr;    // [T,B,D*R] or null (zeros)
  const T* dh_n = nullptr;  // [L*D,B,R] or null (zeros)
  const T* dc_n = nullptr;  // [L*D,B,H] or null (zeros) (LSTM)
  StackInputs<T> in;        // as given to the forward
  // saved and scratch
  const T* saved = nullptr;  // [stack_saved_size]: what the training forward saved
  T* scratch = nullptr;      // [stack_backward_scratch_size]
  // sizes and options
  StackShape shape;
  int64_t truncate = 0;  // k2; 0: full backpropagation through time
  int64_t stride = 0;    // k1, in 1..truncate when truncate > 0
  // false: dh0 / dc0 are not wanted (their contents are then unspecified). With dx null too, the
  // layers below the lowest one with a parameter gradient wanted give nothing anyone wants, and
  // are skipped (a fine-tuned top over frozen layers on data).
  bool state_grads = true;
};

template <typename T>
void stack_forward(const StackForwardArgs<T>& a);

template <typename T>
void stack_backward(const StackBackwardArgs<T>& a);

}  // namespace fusedrnn
