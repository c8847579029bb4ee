// LSTM over a whole sequence, one layer, one direction (the contract: docs/kernels.md).
//
//   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
//   c_t = f*c_{t-1} + i*g        h_t = o*tanh(c_t)          (with a projection: h_t = W_hr o*tanh(c_t))
//
// Shapes (T steps, batch B, input I, hidden H, projection P (0: none), R = P ? P : H), C order:
//   x [T,B,I]  h0 [B,R]  c0 [B,H]  w_ih [4H,I]  w_hh [4H,R]  b_ih, b_hh [4H] (null: zeros)
//   w_hr [P,H] (null when P = 0)  y [T,B,R]  h_n [B,R]  c_n [B,H]
//   workspace [lstm_workspace_size]: gates [T,B,4H] (activated i,f,g,o), c [T,B,H], and with a
//   projection m [T,B,H] = o*tanh(c).
//   batch_sizes [T] (null: all B rows every step): rows [0, batch_sizes[t]) run at step t, the
//   batch sorted longest first; the other rows' y and workspace entries are zero at that step,
//   and h_n / c_n hold each row's state after its own last step.
// The caller owns all memory; scratch is separate from the workspace and need not survive a call.
// Accumulation: parameter gradients +=, activation gradients =. Null bias gradients are skipped.
#pragma once
#include <cstdint>

namespace fusedrnn {

int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H, int64_t P);

// The parts of a workspace laid out for `steps` steps (m only with a projection). Everything is
// time-major, so the parts of steps [s, ...) are these pointers advanced by s steps (at(s)).
template <typename T>
struct LstmSaved {
  T* gates;  // [T,B,4H]; null: inference, nothing saved
  T* c;      // [T,B,H]
  T* m;      // [T,B,H] or null
  int64_t B, H;
  LstmSaved at(int64_t s) const {
    return {gates ? gates + s * B * 4 * H : nullptr, c ? c + s * B * H : nullptr,
            m ? m + s * B * H : nullptr, B, H};
  }
};
template <typename T>
LstmSaved<T> lstm_saved(T* workspace, int64_t steps, int64_t B, int64_t H, int64_t P) {
  if (!workspace) return {nullptr, nullptr, nullptr, B, H};
  T* c = workspace + steps * B * 4 * H;
  return {workspace, c, P ? c + steps * B * H : nullptr, B, H};
}
int64_t lstm_forward_scratch_size(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                                  bool training);
int64_t lstm_backward_scratch_size(int64_t T, int64_t B, int64_t H, int64_t P);

// saved.gates null = inference: nothing is saved and the input projection is done in chunks.
template <typename T>
void lstm_forward(T* y, T* h_n, T* c_n, LstmSaved<T> saved, T* scratch, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                  const T* w_hr, const int64_t* batch_sizes, int64_t steps, int64_t B, int64_t I,
                  int64_t H, int64_t P);

// dy [T,B,R], dh_n [B,R], dc_n [B,H] may be null (zeros). Outputs dx [T,B,I], dh0 [B,R],
// dc0 [B,H]; dw_ih, dw_hh, db_ih, db_hh, dw_hr are accumulated into.
template <typename T>
void lstm_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* dw_hr,
                   T* scratch, const T* dy, const T* dh_n, const T* dc_n, const T* x, const T* h0,
                   const T* c0, const T* w_ih, const T* w_hh, const T* w_hr, const T* y,
                   LstmSaved<const T> saved, const int64_t* batch_sizes, int64_t steps, int64_t B,
                   int64_t I, int64_t H, int64_t P);

}  // namespace fusedrnn
