// LSTM over a whole sequence, one layer, one direction (the contract: docs/kernels.md).
//
//   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
//   c_t = f*c_{t-1} + i*g        h_t = o*tanh(c_t)
//
// Shapes (T steps, batch B, input size I, hidden size H), all dense C order:
//   x [T,B,I]  h0, c0 [B,H]  w_ih [4H,I]  w_hh [4H,H]  b_ih, b_hh [4H]  y [T,B,H]
//   workspace [lstm_workspace_size]: gates [T,B,4H] (activated i,f,g,o), then c [T,B,H]
// The caller owns all memory; scratch is separate from the workspace and need not survive a call.
// Accumulation: parameter gradients +=, activation gradients =.
#pragma once
#include <cstdint>

namespace fusedrnn {

int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H);
int64_t lstm_forward_scratch_size(int64_t T, int64_t B, int64_t H, bool training);
int64_t lstm_backward_scratch_size(int64_t T, int64_t B, int64_t H);

// workspace null = inference: nothing is saved and the input projection is done in chunks.
template <typename T>
void lstm_forward(T* y, T* h_n, T* c_n, T* workspace, T* scratch, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                  int64_t steps, int64_t B, int64_t I, int64_t H);

// dy [T,B,H], dh_n, dc_n [B,H] may be null (zeros). Outputs dx [T,B,I], dh0, dc0 [B,H];
// dw_ih, dw_hh, db_ih, db_hh are accumulated into.
template <typename T>
void lstm_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch,
                   const T* dy, const T* dh_n, const T* dc_n, const T* x, const T* h0,
                   const T* c0, const T* w_ih, const T* w_hh, const T* y, const T* workspace,
                   int64_t steps, int64_t B, int64_t I, int64_t H);

}  // namespace fusedrnn
