// GRU over a whole sequence, one layer, one direction (the arguments: recurrent_cell.h).
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
#pragma once
#include <cstdint>

#include "common/carver.h"
#include "recurrent_cell.h"

namespace fusedrnn {

constexpr int64_t kGruGates = gates_of(CellKind::gru);

// The parts of a workspace laid out for `steps` steps; at(s): the parts of steps [s, ...).
template <typename T>
struct GruSaved {
  T* gates;  // [T,B,3H]; null: inference, nothing saved
  T* extra;  // [T,B,H]: hn (reset_after) or rh (reset_before)
  int64_t B, H;
  GruSaved at(int64_t s) const {
    return {gates ? gates + s * B * kGruGates * H : nullptr, extra ? extra + s * B * H : nullptr, B,
            H};
  }
};
// The workspace's layout; with a null workspace, both parts are null and `size` (if given) gets
// the workspace's length.
template <typename T>
GruSaved<T> gru_saved(T* workspace, int64_t steps, int64_t B, int64_t H, int64_t* size = nullptr) {
  Carver<T> carve{workspace};
  GruSaved<T> saved{};
  saved.gates = carve.take(steps * B * kGruGates * H);
  saved.extra = carve.take(steps * B * H);
  saved.B = B;
  saved.H = H;
  if (size) *size = carve.used;
  return saved;
}
int64_t gru_workspace_size(int64_t T, int64_t B, int64_t H);

int64_t gru_forward_scratch_size(const CellShape& s, bool training);
int64_t gru_backward_scratch_size(const CellShape& s);

// a.workspace null = inference.
template <typename T>
void gru_forward(const CellForwardArgs<T>& a);

template <typename T>
void gru_backward(const CellBackwardArgs<T>& a);

}  // namespace fusedrnn
