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
  // The cell of layer `layer` over `steps` steps.
  CellShape layer_cell(int64_t layer, int64_t steps) const {
    CellShape c = *this;
    c.input = layer_input(layer);
    c.steps = steps;
    return c;
  }
};

int64_t stack_saved_size(const StackShape& s);
int64_t stack_forward_scratch_size(const StackShape& s, bool training);
int64_t stack_backward_scratch_size(const StackShape& s);

// saved null = inference. weights [L*D].
template <typename T>
void stack_forward(T* y, T* h_n, T* c_n, T* saved, T* scratch, const T* x, const T* h0,
                   const T* c0, const LayerWeights<T>* weights, const T* dropout_masks,
                   const int64_t* batch_sizes, const int64_t* lengths, const StackShape& s);

// dy [T,B,D*R], dh_n [L*D,B,R], dc_n [L*D,B,H] may be null (zeros). dx [T,B,I], dh0, dc0 (=);
// grads [L*D] (+=).
// truncate = 0: full backpropagation through time. Otherwise TBPTT(k1 = stride, k2 = truncate) of
// Williams and Peng (1990), one direction only: the steps are cut into chunks of k1 (the last may
// be shorter); the gradient of a chunk's outputs flows back through the chunk and at most k2 - k1
// steps before it, in every layer; the states entering that span are constants, so only spans
// that start at step 0 reach h0 / c0. dh_n / dc_n enter at each row's own last step, with the
// chunk that holds it. Input and parameter gradients add up over the chunks.
template <typename T>
void stack_backward(T* dx, T* dh0, T* dc0, const LayerGrads<T>* grads, T* scratch, const T* dy,
                    const T* dh_n, const T* dc_n, const T* x, const T* h0, const T* c0,
                    const LayerWeights<T>* weights, const T* saved, const T* dropout_masks,
                    const int64_t* batch_sizes, const int64_t* lengths, const StackShape& s,
                    int64_t truncate, int64_t stride);

}  // namespace fusedrnn
