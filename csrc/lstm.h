// LSTM over a whole sequence, one layer, one direction (the arguments: recurrent_cell.h).
//
//   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
//   c_t = f*c_{t-1} + i*g        h_t = o*tanh(c_t)          (with a projection: h_t = W_hr
//   o*tanh(c_t))
//
// Shapes (T steps, batch B, input I, hidden H, projection P (0: none), R = P ? P : H), C order:
//   x [T,B,I]  h0 [B,R]  c0 [B,H]  w_ih [4H,I]  w_hh [4H,R]  b_ih, b_hh [4H] (null: zeros)
//   w_hr [P,H] (null when P = 0)  y [T,B,R]  h_n [B,R]  c_n [B,H]
//   workspace [lstm_workspace_size]: gates [T,B,4H] (activated i,f,g,o), c [T,B,H], and with a
//   projection m [T,B,H] = o*tanh(c); with zoneout on c (recurrent_noise.h) last c~ [T,B,H], the
//   candidate c before zoneout, which h and o saw.
#pragma once
#include <cstdint>

#include "common/carver.h"
#include "recurrent_cell.h"

namespace fusedrnn {

constexpr int64_t kLstmGates = gates_of(CellKind::lstm);

// The parts of a workspace laid out for `steps` steps (m only with a projection). Everything is
// time-major, so the parts of steps [s, ...) are these pointers advanced by s steps (at(s)).
template <typename T>
struct LstmSaved {
  T* gates;   // [T,B,4H]; null: inference, nothing saved
  T* c;       // [T,B,H]
  T* m;       // [T,B,H] or null
  T* c_cand;  // [T,B,H] or null: c~ before zoneout
  int64_t B, H;
  LstmSaved at(int64_t s) const {
    return {gates ? gates + s * B * kLstmGates * H : nullptr,
            c ? c + s * B * H : nullptr,
            m ? m + s * B * H : nullptr,
            c_cand ? c_cand + s * B * H : nullptr,
            B,
            H};
  }
};
// The workspace's layout; with a null workspace, all parts are null and `size` (if given) gets
// the workspace's length.
template <typename T>
LstmSaved<T> lstm_saved(T* workspace, int64_t steps, int64_t B, int64_t H, int64_t P,
                        int64_t* size = nullptr, bool cell_zoneout = false) {
  Carver<T> carve{workspace};
  const int64_t TB = steps * B;
  LstmSaved<T> saved{};
  saved.gates = carve.take(TB * kLstmGates * H);
  saved.c = carve.take(TB * H);
  saved.m = P ? carve.take(TB * H) : nullptr;
  saved.c_cand = cell_zoneout ? carve.take(TB * H) : nullptr;
  saved.B = B;
  saved.H = H;
  if (size) *size = carve.used;
  return saved;
}
int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H, int64_t P, bool cell_zoneout = false);

int64_t lstm_forward_scratch_size(const CellShape& s, bool training);
int64_t lstm_backward_scratch_size(const CellShape& s);

// a.workspace null = inference: nothing is saved and the input projection is done in chunks.
template <typename T>
void lstm_forward(const CellForwardArgs<T>& a);

template <typename T>
void lstm_backward(const CellBackwardArgs<T>& a);

}  // namespace fusedrnn
