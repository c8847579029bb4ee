// Elman RNN over a whole sequence, one layer, one direction (the contract: docs/kernels.md).
//
//   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu
//
// Shapes: x [T,B,I]  h0 [B,H]  w_ih [H,I]  w_hh [H,H]  b_ih, b_hh [H] (null: zeros)  y [T,B,H].
// batch_sizes [T] or null: as in lstm.h (rows past their length output zeros, keep their state).
// No workspace: the activation's derivative is read off y. Parameter gradients +=, others =;
// null bias gradients are skipped.
#pragma once
#include <cstdint>

namespace fusedrnn {

enum class RnnActivation : int { tanh = 0, relu = 1 };

int64_t rnn_forward_scratch_size(int64_t I, int64_t H);
int64_t rnn_backward_scratch_size(int64_t T, int64_t B, int64_t H);

template <typename T>
void rnn_forward(T* y, T* h_n, T* scratch, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                 const T* b_ih, const T* b_hh, const int64_t* batch_sizes, int64_t steps, int64_t B,
                 int64_t I, int64_t H, RnnActivation act);

template <typename T>
void rnn_backward(T* dx, T* dh0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch, const T* dy,
                  const T* dh_n, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                  const T* y, const int64_t* batch_sizes, int64_t steps, int64_t B, int64_t I,
                  int64_t H, RnnActivation act);

}  // namespace fusedrnn
