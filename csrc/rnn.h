// Elman RNN over a whole sequence, one layer, one direction (the arguments: recurrent_cell.h).
//
//   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu (shape.act)
//
// Shapes: x [T,B,I]  h0 [B,H]  w_ih [H,I]  w_hh [H,H]  b_ih, b_hh [H] (null: zeros)  y [T,B,H].
// No workspace: the activation's derivative is read off y; with ONNX's options (shape.options),
// the workspace is the pre-activations [T,B,H] (zero past each row's length).
#pragma once
#include <cstdint>

#include "recurrent_cell.h"

namespace fusedrnn {

int64_t rnn_forward_scratch_size(const CellShape& s);
int64_t rnn_backward_scratch_size(const CellShape& s);

template <typename T>
void rnn_forward(const CellForwardArgs<T>& a);

template <typename T>
void rnn_backward(const CellBackwardArgs<T>& a);

}  // namespace fusedrnn
