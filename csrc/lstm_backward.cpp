#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"
#include "recurrent_noise.h"

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
  // recurrent_noise.h (options only)
  T* dh_cand;     // [B,H]: dL/dh~ of the current step (zoneout)
  T* dc_keep;     // [B,H]: a_c * dL/dc_t, the part of dL/dc_{t-1} that zoneout passes (zoneout)
  T* drop_scale;  // [B,H]: the recurrent dropout's keep / (1 - p)
  T* dh_gemm;     // [B,H]: dgates W_hh before the dropout's mask
  T* h_dropped;   // [T+1,B,H]: h0 and y dropped, for dW_hh
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
  const RecurrentNoise& noise = s.options.noise;
  b.dh_cand = carve.take(noise.zoneout() ? s.batch * H : 0);
  b.dc_keep = carve.take(noise.zoneout() ? s.batch * H : 0);
  b.drop_scale = carve.take(noise.dropout() ? s.batch * H : 0);
  b.dh_gemm = carve.take(noise.dropout() ? s.batch * H : 0);
  b.h_dropped = carve.take(noise.dropout() ? TB * H + s.batch * H : 0);
  b.size = carve.used;
  return b;
}
// forward: pi += p_i*c_prev, pf += p_f*c_prev, po += p_o*c  ->  dp_i += sum dpi*c_prev, ...
// over every step and row (rows past their length have zero gradients), units [j0, j0 + w).
// c_seen: the c that o saw (c, or with zoneout on c the candidate c~).
template <typename T>
void add_peephole_gradients(T* dpeephole, const T* dgates, const T* c, const T* c_seen, const T* c0,
                            const PanelShare& units, int64_t steps, int64_t B, int64_t H,
                            bool fresh) {
  if (fresh)
    for (int64_t gate = 0; gate < 3; ++gate)
      std::fill_n(dpeephole + gate * H + units.begin, units.width, T(0));
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const T* dg = dgates + (t * B + b) * kLstmGates * H;
      const T* c_now = c_seen + (t * B + b) * H;
      const T* c_prev = t ? c + ((t - 1) * B + b) * H : c0 + b * H;
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
  const CellOptions& options = a.shape.options;
  const RecurrentNoise& noise = options.noise;  // (needs options.enabled)
  const LstmSaved<const T> saved =
      lstm_saved(a.workspace, a.saved_steps, B, H, P, nullptr, noise.zoneout_c > 0)
          .at(a.first_step);
  const LstmBackwardScratch<T> scratch = lstm_backward_scratch(a.scratch, a.shape);
  const auto& kernels = pointwise<T>();
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* dgates = scratch.dgates;

  // dh0 and dc0 carry the state gradients backwards in time and end as dL/dh0, dL/dc0. Rows
  // past their length at a step are not touched, so dh_n / dc_n reach each row's last step.
  copy_or_zero(dh0, a.dh_n, B * R);
  copy_or_zero(dc0, a.dc_n, B * H);
  if (noise.dropout()) recurrent_dropout_scale(noise, B, H, scratch.drop_scale);
  // The time loop on a team (StepSplit). By units, each member owns hidden units [j0, j0 + w)
  // (and outputs [p0, p0+pw) of a projection): it computes their gate gradients, then, after a
  // barrier (every gate column enters every dh_prev column), the columns of dh_prev its panels of
  // W_hh hold: the same units [j0, j0 + w) without a projection, so the next step's pass reads
  // what this member wrote. By rows, each member does both for its own rows, with no barrier.
  run_team(recurrent_team_size(H, B * G * R, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, G * R * int64_t(sizeof(T)), !batch_sizes && !P);
    const PanelShare columns = panel_share(R, nr, member, members);  // of dh_prev, its panels
    const PackedWeights<T> w_hh_panels =
        backward_step_panels(step_kernel, scratch.packed, w_hh, G, R, columns, steps);
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
      if (options.enabled && noise.zoneout()) {  // (no projection: R = H, dh is dh0)
        // forward: h = a_h*h_prev + (1-a_h)*h~, c = a_c*c_prev + (1-a_c)*c~; the pass below
        // differentiates h~ and c~; dh0 keeps a_h*dL/dh for dh_prev, dc_keep a_c*dL/dc.
        const int64_t step = a.first_step + t;
        zoneout_gradients(noise, NoiseMask::zoneout_h, noise.zoneout_h, step, r0, rows, j0, w, H,
                          dh0 + at, dy_at, scratch.dh_cand + at, dh0 + at);
        zoneout_gradients<T>(noise, NoiseMask::zoneout_c, noise.zoneout_c, step, r0, rows, j0, w, H,
                             dc0 + at, nullptr, dc0 + at, scratch.dc_keep + at);
        const T* c_cand = noise.zoneout_c > 0 ? saved.c_cand : saved.c;
        kernels.lstm_backward_options(options, rows, H, w, peephole, dg + r0 * G + j0, dc0 + at,
                                      scratch.dh_cand + at, nullptr, gates_at,
                                      c_cand + t * B * H + at, c_prev + at);
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t j = 0; j < w; ++j) dc0[at + b * H + j] += scratch.dc_keep[at + b * H + j];
      } else if (options.enabled)
        kernels.lstm_backward_options(options, rows, H, w, peephole, dg + r0 * G + j0, dc0 + at,
                                      dh + r0 * R + j0, dy_at, gates_at, saved.c + t * B * H + at,
                                      c_prev + at);
      else
        kernels.lstm_backward(rows, H, w, dg + r0 * G + j0, dc0 + at, dh + r0 * R + j0, dy_at,
                              gates_at, saved.c + t * B * H + at, c_prev + at);
      if (member == 0) zero_rows(dg, n, B, G);
      split.share_step_results();
      // forward: gates += h_prev W_hh^T  ->  dh_prev = dgates W_hh (running rows only); with
      // zoneout dh0 holds a_h*dL/dh already, which the GEMM adds to
      if (noise.dropout()) {  // forward: gates += (h_prev * drop_scale) W_hh^T
        step_gemm(step_kernel, w_hh_panels, 0, 1, dh_columns, rows, dg + r0 * G, G,
                  scratch.dh_gemm + r0 * R, R, false);
        for (int64_t b = r0; b < r0 + rows; ++b)
          for (int64_t j = dh_columns.begin; j < dh_columns.begin + dh_columns.width; ++j) {
            const int64_t k = b * H + j;
            const T kept = noise.zoneout() ? dh0[k] : T(0);
            dh0[k] = kept + scratch.drop_scale[k] * scratch.dh_gemm[k];
          }
      } else
        step_gemm(step_kernel, w_hh_panels, 0, 1, dh_columns, rows, dg + r0 * G, G, dh0 + r0 * R, R,
                  noise.zoneout());
    }
  });

  // Everything that does not recur, over all steps at once (rows past their length are zero),
  // on a team of its own, each member its share. forward: gates = x W_ih^T + b_ih + h_prev W_hh^T
  // + b_hh (and h = m W_hr^T)
  const int64_t TB = steps * B;
  // the h_{t-1} the recurrent GEMM read: h0, then y
  const std::pair<const T*, const T*> h_read = recurrent_inputs<T>(
      noise, a.g.dw_hh, h0, y, scratch.drop_scale, scratch.h_dropped, steps, B, H);
  const T *h_first = h_read.first, *h_seq = h_read.second;
  run_team(gemm_team_size(TB * G * (I + R)), [&](int member, int members) {
    const Team team{member, members};
    const bool fresh = a.g.fresh;
    input_gradients(team, a.dx, a.g.dw_ih, scratch.input_tails, dgates, G, G, x, w_ih, TB, I,
                    fresh);
    recurrent_weight_gradient(team, a.g.dw_hh, R, scratch.recurrent_tails, dgates, G, G, h_seq,
                              h_first, steps, B, R, fresh);
    add_column_sums(team, a.g.db_ih, a.g.db_hh, dgates, TB, G, G, fresh);
    if (P && a.g.dw_hr)  // forward: h = m W_hr^T  ->  dW_hr += dh^T m
      weight_gradient(team, a.g.dw_hr, H, scratch.m_tail, scratch.dhs, P, P, saved.m, TB, H,
                      !fresh);
    if (a.w.peephole && a.g.dpeephole)  // this member's units of the peephole gradients
      add_peephole_gradients(a.g.dpeephole, dgates, saved.c, saved.c_cand ? saved.c_cand : saved.c,
                             c0, panel_share(H, 1, member, members), steps, B, H, fresh);
  });
}

template void lstm_backward<float>(const CellBackwardArgs<float>&);
template void lstm_backward<double>(const CellBackwardArgs<double>&);

}  // namespace fusedrnn
