// The layer-normalised LSTM and GRU (Ba, Kiros and Hinton 2016; haste's LayerNormLSTM), one
// layer, one direction, over a whole sequence. LN(v) normalises each row of v over its whole
// width (layer_norm.h), without gain or bias; every LN has its own gain (and the LSTM's cell LN
// its own bias). The gains and biases of the two pre-activation LNs would only add up with the
// cell's bias, so the cell has one bias there (haste's choice):
//
// LSTM (gates i, f, g, o, width 4H):
//   pre = gamma_ih * LN(W_ih x_t) + gamma_hh * LN(W_hh h_{t-1}) + bias
//   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid (pre)
//   c_t = f*c_{t-1} + i*g          h_t = o * tanh(gamma_c * LN(c_t) + beta_c)
// GRU (gates r, z, n, width 3H; PyTorch's reset_after form):
//   a = gamma_ih * LN(W_ih x_t) + b_ih          b = gamma_hh * LN(W_hh h_{t-1}) + b_hh
//   r = sigmoid(a_r + b_r)   z = sigmoid(a_z + b_z)   n = tanh(a_n + r * b_n)
//   h_t = (1-z)*n + z*h_{t-1}
//
// Shapes (T steps, batch B, input I, hidden H, G = 4H or 3H), C order, one dtype T:
//   x [T,B,I]  h0 [B,H]  c0 [B,H] (LSTM)  w_ih [G,I]  w_hh [G,H]  y [T,B,H]  h_n [B,H]
//   c_n [B,H] (LSTM)
//   gains and biases: LnLstmStepParams / LnGruStepParams (common/layer_norm_table.h)
// The workspace a training forward saves for backward (ln_*_workspace_size): xhat_x [T,B,G]
// (LN(W_ih x)), rstd_x [T,B], xhat_h [T,B,G] (LN(W_hh h_{t-1})), rstd_h [T,B], the activated gates
// [T,B,G] and, for the LSTM, c [T,B,H], chat [T,B,H] (LN(c)), rstd_c [T,B].
//
// The input projection and its LN run over all steps at once; each step's recurrent GEMM is
// followed by one fused pass per row: its LN, the gates, the state update (and the LSTM's cell
// LN). A row's LN needs all its units, so the time loop's team splits the batch rows (each
// member multiplies its rows by all of W_hh, no barrier per step); a batch of fewer than
// 2 * kMinRowsPerMember rows runs on one thread. No lengths, no projection.
// Accumulation as recurrent_cell.h: parameter gradients +=, activation gradients =.
#pragma once
#include <cstdint>

#include "common/carver.h"
#include "common/layer_norm_table.h"
#include "recurrent_cell.h"

namespace fusedrnn {

template <typename T>
struct LnCellWeights {
  const T* w_ih;  // [G,I]
  const T* w_hh;  // [G,H]
};

template <typename T>
struct LnLstmGrads {  // (+=); null biases are skipped
  T *dw_ih, *dw_hh, *dbias, *dgamma_ih, *dgamma_hh, *dgamma_c, *dbeta_c;
};
template <typename T>
struct LnGruGrads {  // (+=); null biases are skipped
  T *dw_ih, *dw_hh, *db_ih, *db_hh, *dgamma_ih, *dgamma_hh;
};

// The parts of a workspace (or, in inference, of the scratch: then the per-step parts hold one
// step). Time-major: at step t a part of width F starts at t * B * F.
template <typename T>
struct LnSaved {
  T *xhat_x, *rstd_x, *xhat_h, *rstd_h, *gates, *c, *chat, *rstd_c;
};
// steps: of the input parts; state_steps: of the per-step parts (steps, or 1 in inference).
template <typename T>
LnSaved<T> ln_saved(T* base, CellKind cell, int64_t steps, int64_t state_steps, int64_t B,
                    int64_t H, int64_t* size = nullptr) {
  const int64_t G = gates_of(cell) * H, S = state_steps * B;
  const bool lstm = cell == CellKind::lstm;
  Carver<T> carve{base};
  LnSaved<T> s{};
  s.xhat_x = carve.take(steps * B * G);
  s.rstd_x = carve.take(steps * B);
  s.xhat_h = carve.take(S * G);
  s.rstd_h = carve.take(S);
  s.gates = carve.take(S * G);
  s.c = carve.take(lstm ? S * H : 0);
  s.chat = carve.take(lstm ? S * H : 0);
  s.rstd_c = carve.take(lstm ? S : 0);
  if (size) *size = carve.used;
  return s;
}
int64_t ln_cell_workspace_size(CellKind cell, int64_t T, int64_t B, int64_t H);

template <typename T>
struct LnLstmForwardArgs {
  T *y = nullptr, *h_n = nullptr, *c_n = nullptr;      // outputs
  const T *x = nullptr, *h0 = nullptr, *c0 = nullptr;  // inputs
  LnCellWeights<T> w{};                                //
  LnLstmStepParams<T> p{};                             //
  T* workspace = nullptr;                              // [ln_cell_workspace_size]; null = inference
  T* scratch = nullptr;                                // [ln_cell_forward_scratch_size]
  CellShape shape;                                     // steps, batch, input, hidden
};
template <typename T>
struct LnLstmBackwardArgs {
  T *dx = nullptr, *dh0 = nullptr, *dc0 = nullptr;          // outputs (=); dx null: not computed
  LnLstmGrads<T> g{};                                       // (+=)
  const T *dy = nullptr, *dh_n = nullptr, *dc_n = nullptr;  // null: zeros
  const T *x = nullptr, *h0 = nullptr, *c0 = nullptr, *y = nullptr;
  LnCellWeights<T> w{};
  LnLstmStepParams<T> p{};
  const T* workspace = nullptr;
  T* scratch = nullptr;  // [ln_cell_backward_scratch_size]
  CellShape shape;
};
template <typename T>
struct LnGruForwardArgs {
  T *y = nullptr, *h_n = nullptr;
  const T *x = nullptr, *h0 = nullptr;
  LnCellWeights<T> w{};
  LnGruStepParams<T> p{};
  T* workspace = nullptr;
  T* scratch = nullptr;
  CellShape shape;
};
template <typename T>
struct LnGruBackwardArgs {
  T *dx = nullptr, *dh0 = nullptr;
  LnGruGrads<T> g{};
  const T *dy = nullptr, *dh_n = nullptr;
  const T *x = nullptr, *h0 = nullptr, *y = nullptr;
  LnCellWeights<T> w{};
  LnGruStepParams<T> p{};
  const T* workspace = nullptr;
  T* scratch = nullptr;
  CellShape shape;
};

int64_t ln_cell_forward_scratch_size(CellKind cell, const CellShape& s, bool training);
int64_t ln_cell_backward_scratch_size(CellKind cell, const CellShape& s);

template <typename T>
void ln_lstm_forward(const LnLstmForwardArgs<T>& a);
template <typename T>
void ln_lstm_backward(const LnLstmBackwardArgs<T>& a);
template <typename T>
void ln_gru_forward(const LnGruForwardArgs<T>& a);
template <typename T>
void ln_gru_backward(const LnGruBackwardArgs<T>& a);

}  // namespace fusedrnn
