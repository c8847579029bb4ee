// What the layer-normalised LSTM's and GRU's sequence drivers share (ln_cell.h): the scratch,
// the input projection with its LN, the time loops split by batch rows, and the backward's
// work over all steps at once.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/carver.h"
#include "common/layer_norm_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "layer_norm.h"
#include "ln_cell.h"

namespace fusedrnn {

// Threads of a time loop split by batch rows: at least kMinRowsPerMember rows each, and only
// from the work per step at which a team pays off (common/threading.h).
inline int ln_team_size(int64_t B, int64_t H, int64_t G) {
  if (inside_team()) return 1;
  const int64_t threads = std::min<int64_t>(get_num_threads(), B / kMinRowsPerMember);
  return B * G * H >= team_thresholds().min_step_work && threads > 1 ? static_cast<int>(threads)
                                                                     : 1;
}

// The split of such a loop: always by batch rows (StepSplit's by_rows, common/step_gemm.h), since
// a row's LN needs all its units. A member packs its panels of W_hh (packs), waits for the
// others' (wait_for_all_panels), then multiplies its rows [row0, row0 + rows) by all of them
// (units: every hidden unit).
inline StepSplit ln_row_split(int member, int members, int64_t B, int64_t H, int64_t nr) {
  StepSplit s;
  s.by_rows = members > 1;
  s.packs = panel_share(H, nr, member, members);
  s.units = panel_share(H, nr, 0, 1);
  s.row0 = share_begin(B, member, members);
  s.rows = share_begin(B, member + 1, members) - s.row0;
  return s;
}

// The forward's scratch: W_hh^T and W_ih^T in panels and, in inference, the parts a training
// forward saves (the per-step ones for one step).
template <typename T>
struct LnForwardScratch {
  T *packed_hh, *packed_ih;
  LnSaved<T> inference;
  int64_t size;
};
template <typename T>
LnForwardScratch<T> ln_forward_scratch(T* base, CellKind cell, const CellShape& s, bool training) {
  const int64_t blocks = gates_of(cell), H = s.hidden;
  Carver<T> carve{base};
  LnForwardScratch<T> f{};
  f.packed_hh = carve.take(packed_weights_size(H, blocks, H));
  f.packed_ih = carve.take(packed_weights_size(s.input, blocks, H));
  int64_t saved_size = 0;
  if (!training) ln_saved<T>(nullptr, cell, s.steps, 1, s.batch, H, &saved_size);
  f.inference = ln_saved(carve.take(saved_size), cell, s.steps, 1, s.batch, H);
  f.size = carve.used;
  return f;
}

// The backward's scratch: the gradients of the pre-activations' parts over all steps (d_ax of
// gamma_ih * xhat_x, d_ah of gamma_hh * xhat_h: one array for the LSTM, where they are equal),
// of W_hh h_{t-1} (dhproj), of the LSTM's u = gamma_c * chat + beta_c (du); W_hh in panels; the
// packed tails of the GEMMs over all steps.
template <typename T>
struct LnBackwardScratch {
  T *d_ax, *d_ah, *dhproj, *du, *packed, *input_tails, *recurrent_tails;
  int64_t size;
};
template <typename T>
LnBackwardScratch<T> ln_backward_scratch(T* base, CellKind cell, const CellShape& s) {
  const bool lstm = cell == CellKind::lstm;
  const int64_t H = s.hidden, G = gates_of(cell) * H, TB = s.steps * s.batch;
  Carver<T> carve{base};
  LnBackwardScratch<T> b{};
  b.d_ax = carve.take(TB * G);
  b.d_ah = lstm ? b.d_ax : carve.take(TB * G);
  b.dhproj = carve.take(TB * G);
  b.du = carve.take(lstm ? TB * H : 0);
  b.packed = carve.take(packed_weights_size(G, 1, H));
  b.input_tails = carve.take(input_gradients_scratch_size(G, TB));
  b.recurrent_tails = carve.take(recurrent_weight_gradient_scratch_size(s.steps, s.batch));
  b.size = carve.used;
  return b;
}

// xhat_x [rows, blocks*H] = LN(x W_ih^T) of all steps' rows at once, and rstd_x [rows].
template <typename T>
void ln_project_inputs(T* xhat_x, T* rstd_x, T* packed_ih, const T* x, const T* w_ih, int64_t rows,
                       int64_t I, int64_t blocks, int64_t H, T eps) {
  const int64_t G = blocks * H;
  project_inputs(xhat_x, G, packed_ih, x, w_ih, rows, I, blocks, H);
  layer_norm_forward<T>(xhat_x, nullptr, rstd_x, xhat_x, nullptr, nullptr, eps, rows, G);
}

// A forward over the sequence: the input projection of every step and its LN at once, then the
// time loop: per step, hproj = h_{t-1} W_hh^T for this member's rows into xhat_h (of step s = t,
// or 0 in inference), then pass(saved, t, s, row0, rows), the cell's fused pass. The parts are in
// the workspace (training) or in the scratch (inference, workspace null); returns them.
template <typename T, typename StepPass>
LnSaved<T> ln_forward_sequence(CellKind cell, const CellShape& shape, const LnCellWeights<T>& w,
                               const T* x, const T* h0, T* y, T* workspace, T* scratch_base, T eps,
                               StepPass&& pass) {
  const int64_t steps = shape.steps, B = shape.batch, I = shape.input, H = shape.hidden;
  const int64_t blocks = gates_of(cell), G = blocks * H;
  const bool training = workspace != nullptr;
  const LnForwardScratch<T> scratch = ln_forward_scratch(scratch_base, cell, shape, training);
  const LnSaved<T> saved =
      training ? ln_saved(workspace, cell, steps, steps, B, H) : scratch.inference;
  ln_project_inputs(saved.xhat_x, saved.rstd_x, scratch.packed_ih, x, w.w_ih, steps * B, I, blocks,
                    H, eps);
  const auto& kernel = step_gemm_kernels<T>();
  run_team(ln_team_size(B, H, G), [&](int member, int members) {
    const StepSplit split = ln_row_split(member, members, B, H, kernel.panel_width);
    const PackedWeights<T> w_hh_t =
        pack_weights(kernel, scratch.packed_hh, w.w_hh, 1, H, H, blocks, H, split.packs);
    split.wait_for_all_panels();
    const int64_t r0 = split.row0;
    for (int64_t t = 0; t < steps; ++t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t s = training ? t : 0;
      const T* h_prev = t ? y + (t - 1) * B * H : h0;
      step_gemm(kernel, w_hh_t, 0, blocks, split.units, split.rows, h_prev + r0 * H, H,
                saved.xhat_h + s * B * G + r0 * G, G, false);
      pass(saved, t, s, r0, split.rows);
    }
  });
  return saved;
}

// The backward time loop, from the last step: pass(t, row0, rows), the fused pass that writes
// dhproj of step t for this member's rows, then dh (+)= dhproj W_hh for them (accumulate: the
// pass left a direct part of dL/dh_{t-1} in dh, the GRU's).
template <typename T, typename StepPass>
void ln_backward_loop(CellKind cell, const CellShape& shape, const T* w_hh, T* packed,
                      const T* dhproj, T* dh, bool accumulate, StepPass&& pass) {
  const int64_t steps = shape.steps, B = shape.batch, H = shape.hidden;
  const int64_t G = gates_of(cell) * H;
  const auto& kernel = step_gemm_kernels<T>();
  run_team(ln_team_size(B, H, G), [&](int member, int members) {
    const StepSplit split = ln_row_split(member, members, B, H, kernel.panel_width);
    // forward: hproj = h_prev W_hh^T  ->  dh_prev = dhproj W_hh; W_hh [G,H] is B [K=G, H]
    const PackedWeights<T> w_hh_panels =
        pack_weights(kernel, packed, w_hh, H, 1, G, 1, H, split.packs);
    split.wait_for_all_panels();
    const int64_t r0 = split.row0;
    for (int64_t t = steps - 1; t >= 0; --t) {
      if (stop_requested()) break;
      pass(t, r0, split.rows);
      step_gemm(kernel, w_hh_panels, 0, 1, split.units, split.rows, dhproj + t * B * G + r0 * G, G,
                dh + r0 * H, H, accumulate);
    }
  });
}

// The gradients over all steps at once, on a team, after the time loop:
//   forward: a = gamma_ih * xhat_x (+ b_ih), xhat_x = LN(x W_ih^T)  and
//            b = gamma_hh * xhat_h (+ b_hh), xhat_h = LN(h_{t-1} W_hh^T)
//   dgamma_ih += sum d_ax * xhat_x, db_ih += sum d_ax; dgamma_hh, db_hh alike with d_ah
//   (db_hh null for the LSTM, whose one bias is db_ih); then d_ax becomes, in place, the
//   gradient of x W_ih^T (LN's backward), and dx = d W_ih, dW_ih += d^T x, dW_hh += dhproj^T h.
// extra(team) adds the cell's own column sums before the barrier.
template <typename T, typename Extra>
void ln_backward_over_steps(CellKind cell, const CellShape& shape, const LnBackwardScratch<T>& b,
                            const LnSaved<const T>& saved, const T* gamma_ih, T* dx, T* dw_ih,
                            T* dw_hh, T* dgamma_ih, T* db_ih, T* dgamma_hh, T* db_hh, const T* x,
                            const T* w_ih, const T* y, const T* h0, Extra&& extra) {
  const int64_t steps = shape.steps, B = shape.batch, I = shape.input, H = shape.hidden;
  const int64_t G = gates_of(cell) * H, TB = steps * B;
  const auto& ln = layer_norm_kernels<T>();
  run_team(gemm_team_size(TB * G * (I + H)), [&](int member, int members) {
    const Team team{member, members};
    const int64_t j0 = team.begin(G), width = team.end(G) - j0;
    if (width > 0) {
      ln.param_grads(TB, width, G, b.d_ax + j0, saved.xhat_x + j0, nullptr, nullptr,
                     dgamma_ih ? dgamma_ih + j0 : nullptr, db_ih ? db_ih + j0 : nullptr);
      ln.param_grads(TB, width, G, b.d_ah + j0, saved.xhat_h + j0, nullptr, nullptr,
                     dgamma_hh ? dgamma_hh + j0 : nullptr, db_hh ? db_hh + j0 : nullptr);
    }
    extra(team);
    team_barrier();  // d_ax is read whole above before it is rewritten below
    const int64_t r0 = team.begin(TB), rows = team.end(TB) - r0;
    if (rows > 0)
      ln.backward_rows(rows, G, b.d_ax + r0 * G, saved.xhat_x + r0 * G, gamma_ih, nullptr,
                       saved.rstd_x + r0, b.d_ax + r0 * G, nullptr, nullptr);
    team_barrier();
    input_gradients(team, dx, dw_ih, b.input_tails, b.d_ax, G, G, x, w_ih, TB, I);
    recurrent_weight_gradient(team, dw_hh, H, b.recurrent_tails, b.dhproj, G, G, y, h0, steps, B,
                              H);
  });
}

}  // namespace fusedrnn
