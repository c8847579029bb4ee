// GRU over a whole sequence, one layer, one direction (the contract: docs/kernels.md).
//
//   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)     z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//   reset_after (PyTorch, cuDNN):  n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
//   reset_before (Cho 2014):       n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
//   h' = (1-z)*n + z*h
//
// Shapes (T steps, batch B, input size I, hidden size H), all dense C order:
//   x [T,B,I]  h0 [B,H]  w_ih [3H,I]  w_hh [3H,H]  b_ih, b_hh [3H] (null: zeros)  y [T,B,H]
//   workspace [gru_workspace_size]: gates [T,B,3H] (activated r,z,n), then
//     reset_after: hn [T,B,H] = W_hn h_{t-1} + b_hn;  reset_before: rh [T,B,H] = r_t*h_{t-1}
//   batch_sizes [T] or null: as in lstm.h (rows past their length output zeros, keep their state).
// Accumulation: parameter gradients +=, activation gradients =. Null bias gradients are skipped.
#pragma once
#include <cstdint>

namespace fusedrnn {

int64_t gru_workspace_size(int64_t T, int64_t B, int64_t H);

// The parts of a workspace laid out for `steps` steps; at(s): the parts of steps [s, ...).
template <typename T>
struct GruSaved {
  T* gates;  // [T,B,3H]; null: inference, nothing saved
  T* extra;  // [T,B,H]: hn (reset_after) or rh (reset_before)
  int64_t B, H;
  GruSaved at(int64_t s) const {
    return {gates ? gates + s * B * 3 * H : nullptr, extra ? extra + s * B * H : nullptr, B, H};
  }
};
template <typename T>
GruSaved<T> gru_saved(T* workspace, int64_t steps, int64_t B, int64_t H) {
  if (!workspace) return {nullptr, nullptr, B, H};
  return {workspace, workspace + steps * B * 3 * H, B, H};
}
int64_t gru_forward_scratch_size(int64_t T, int64_t B, int64_t I, int64_t H, bool training);
int64_t gru_backward_scratch_size(int64_t T, int64_t B, int64_t H, bool reset_after);

// saved.gates null = inference.
template <typename T>
void gru_forward(T* y, T* h_n, GruSaved<T> saved, T* scratch, const T* x, const T* h0, const T* w_ih,
                 const T* w_hh, const T* b_ih, const T* b_hh, const int64_t* batch_sizes,
                 int64_t steps, int64_t B, int64_t I, int64_t H, bool reset_after);

// dy [T,B,H], dh_n [B,H] may be null (zeros). Outputs dx [T,B,I], dh0 [B,H]; dw_ih, dw_hh,
// db_ih, db_hh are accumulated into.
template <typename T>
void gru_backward(T* dx, T* dh0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch, const T* dy,
                  const T* dh_n, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                  const T* y, GruSaved<const T> saved, const int64_t* batch_sizes, int64_t steps,
                  int64_t B, int64_t I, int64_t H, bool reset_after);

}  // namespace fusedrnn
