#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"

namespace fusedrnn {

namespace {
// The scratch of a backward, in order (a null base only counts: lstm_backward_scratch_size).
template <typename T>
struct LstmBackwardScratch {
  T* dgates;  // [T,B,4H]
  T* dhs;     // [T,B,P]: dL/dh_t of every step, for dW_hr (projection only)
  T* dm;      // [B,H]: dL/dm_t of the current step (projection only)
  T* packed;  // W_hh in panels
  // The packed last panels of the matrices read in place, each packed and read by the one member
  // owning it: for input_gradients, recurrent_weight_gradient, W_hr and m (projection only).
  T* input_tails;
  T* recurrent_tails;
  T* hr_tail;
  T* m_tail;
  int64_t size;
};

template <typename T>
LstmBackwardScratch<T> lstm_backward_scratch(T* base, const CellShape& s) {
  const int64_t TB = s.steps * s.batch, H = s.hidden, P = s.proj, R = s.out();
  const int64_t G = kLstmGates * H;
  Carver<T> carve{base};
  LstmBackwardScratch<T> b{};
  b.dgates = carve.take(TB * G);
  b.dhs = carve.take(P ? TB * R : 0);
  b.dm = carve.take(P ? s.batch * H : 0);
  b.packed = carve.take(packed_weights_size(G, 1, R));
  b.input_tails = carve.take(input_gradients_scratch_size(G, TB));
  b.recurrent_tails = carve.take(recurrent_weight_gradient_scratch_size(s.steps, s.batch));
  b.hr_tail = carve.take(P ? tail_panel_size(P) : 0);
  b.m_tail = carve.take(P ? tail_panel_size(TB) : 0);
  b.size = carve.used;
  return b;
}
// forward: pi += p_i*c_prev, pf += p_f*c_prev, po += p_o*c  ->  dp_i += sum dpi*c_prev, ...
// over every step and row (rows past their length have zero gradients), units [j0, j0 + w).
template <typename T>
void add_peephole_gradients(T* dpeephole, const T* dgates, const T* c, const T* c0,
                            const PanelShare& units, int64_t steps, int64_t B, int64_t H) {
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const T* dg = dgates + (t * B + b) * kLstmGates * H;
      const T* c_now = c + (t * B + b) * H;
      const T* c_prev = t ? c_now - B * H : c0 + b * H;
      for (int64_t j = units.begin; j < units.begin + units.width; ++j) {
        dpeephole[j] += dg[j] * c_prev[j];
        dpeephole[H + j] += dg[H + j] * c_prev[j];
        dpeephole[2 * H + j] += dg[3 * H + j] * c_now[j];
      }
    }
}
}  // namespace

int64_t lstm_backward_scratch_size(const CellShape& s) {
  return lstm_backward_scratch<float>(nullptr, s).size;
}

// The arguments and their shapes: recurrent_cell.h (CellBackwardArgs), lstm.h.
template <typename T>
void lstm_backward(const CellBackwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const int64_t P = a.shape.proj, G = kLstmGates * H, R = a.shape.out();
  const T *dy = a.dy, *x = a.x, *h0 = a.h0, *c0 = a.c0, *y = a.y;
  const T *w_ih = a.w.w_ih, *w_hh = a.w.w_hh, *w_hr = a.w.w_hr;
  const int64_t* batch_sizes = a.batch_sizes;
  T *dh0 = a.dh0, *dc0 = a.dc0;
  const LstmSaved<const T> saved = lstm_saved(a.workspace, a.saved_steps, B, H, P).at(a.first_step);
  const LstmBackwardScratch<T> scratch = lstm_backward_scratch(a.scratch, a.shape);
  const auto& kernels = pointwise<T>();
  const CellOptions& options = a.shape.options;
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* dgates = scratch.dgates;

  // dh0 and dc0 carry the state gradients backwards in time and end as dL/dh0, dL/dc0. Rows
  // past their length at a step are not touched, so dh_n / dc_n reach each row's last step.
  copy_or_zero(dh0, a.dh_n, B * R);
  copy_or_zero(dc0, a.dc_n, B * H);
  // The time loop on a team (StepSplit). By units, each member owns hidden units [j0, j0 + w)
  // (and outputs [p0, p0+pw) of a projection): it computes their gate gradients, then, after a
  // barrier (every gate column enters every dh_prev column), the columns of dh_prev its panels of
  // W_hh hold: the same units [j0, j0 + w) without a projection, so the next step's pass reads
  // what this member wrote. By rows, each member does both for its own rows, with no barrier.
  run_team(recurrent_team_size(H, B * G * R, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, G * R * int64_t(sizeof(T)), !batch_sizes && !P);
    const PanelShare columns = panel_share(R, nr, member, members);  // of dh_prev, packed here
    const PackedWeights<T> w_hh_packed =
        pack_weights(step_kernel, scratch.packed, w_hh, R, 1, G, 1, R, columns);
    split.wait_for_all_panels();
    const PanelShare& dh_columns = split.by_rows ? split.units : columns;  // (R = H by rows)
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const T* peephole = a.w.peephole ? a.w.peephole + j0 : nullptr;
    const PackedWeights<T> w_hr_panels =  // W_hr [P,H] read in place: dm = dh W_hr
        P ? in_place_panels(step_kernel, w_hr, H, P, H, scratch.hr_tail, split.units)
          : PackedWeights<T>{};
    const int64_t p0 = columns.begin, pw = columns.width;  // with a projection, R = P
    for (int64_t t = steps - 1; t >= 0; --t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* dg = dgates + t * B * G;
      const T* c_prev = t ? saved.c + (t - 1) * B * H : c0;
      const T* dy_t = dy ? dy + t * B * R : nullptr;
      const T* dh = dh0;  // dL/d(o*tanh(c)) as the pass reads it
      if (P) {
        // forward: h = m W_hr^T  ->  dm = (dh_carry + dy) W_hr
        T* dh_t = scratch.dhs + t * B * R;
        for (int64_t b = 0; b < n; ++b)
          for (int64_t k = p0; k < p0 + pw; ++k)
            dh_t[b * R + k] = dh0[b * R + k] + (dy_t ? dy_t[b * R + k] : T(0));
        if (member == 0) zero_rows(dh_t, n, B, R);
        team_barrier();
        step_gemm(step_kernel, w_hr_panels, 0, 1, split.units, n, dh_t, P, scratch.dm, H, false);
        dh = scratch.dm;
        dy_t = nullptr;
      }
      const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
      const T* dy_at = dy_t ? dy_t + r0 * R + j0 : nullptr;
      const T* gates_at = saved.gates + t * B * G + r0 * G + j0;
      if (options.enabled)
        kernels.lstm_backward_options(options, rows, H, w, peephole, dg + r0 * G + j0, dc0 + at,
                                      dh + r0 * R + j0, dy_at, gates_at, saved.c + t * B * H + at,
                                      c_prev + at);
      else
        kernels.lstm_backward(rows, H, w, dg + r0 * G + j0, dc0 + at, dh + r0 * R + j0, dy_at,
                              gates_at, saved.c + t * B * H + at, c_prev + at);
      if (member == 0) zero_rows(dg, n, B, G);
      split.share_step_results();
      // forward: gates += h_prev W_hh^T  ->  dh_prev = dgates W_hh (running rows only)
      step_gemm(step_kernel, w_hh_packed, 0, 1, dh_columns, rows, dg + r0 * G, G, dh0 + r0 * R, R,
                false);
    }
  });

  // Everything that does not recur, over all steps at once (rows past their length are zero),
  // on a team of its own, each member its share. forward: gates = x W_ih^T + b_ih + h_prev W_hh^T
  // + b_hh (and h = m W_hr^T)
  const int64_t TB = steps * B;
  run_team(gemm_team_size(TB * G * (I + R)), [&](int member, int members) {
    const Team team{member, members};
    input_gradients(team, a.dx, a.g.dw_ih, scratch.input_tails, dgates, G, G, x, w_ih, TB, I);
    recurrent_weight_gradient(team, a.g.dw_hh, R, scratch.recurrent_tails, dgates, G, G, y, h0,
                              steps, B, R);
    add_column_sums(team, a.g.db_ih, a.g.db_hh, dgates, TB, G, G);
    if (P) {  // forward: h = m W_hr^T  ->  dW_hr += dh^T m, this member's columns of m
      const PanelShare share = panel_share(H, nr, member, members);
      const PackedWeights<T> ms =
          in_place_panels(step_kernel, saved.m, H, TB, H, scratch.m_tail, share);
      step_gemm(step_kernel, ms, 0, 1, share, P, scratch.dhs, P, a.g.dw_hr, H, true, true);
    }
    if (a.w.peephole && a.g.dpeephole)  // this member's units of the peephole gradients
      add_peephole_gradients(a.g.dpeephole, dgates, saved.c, c0, panel_share(H, 1, member, members),
                             steps, B, H);
  });
}

template void lstm_backward<float>(const CellBackwardArgs<float>&);
template void lstm_backward<double>(const CellBackwardArgs<double>&);

}  // namespace fusedrnn
