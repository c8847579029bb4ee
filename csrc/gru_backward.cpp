#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "gru.h"
#include "recurrent_noise.h"

namespace fusedrnn {

namespace {
// The scratch of a backward, in order (a null base only counts: gru_backward_scratch_size).
template <typename T>
struct GruBackwardScratch {
  T* dgates_x;  // [T,B,3H]: the gradient of W_ih x + b_ih
  // The gradient of the h side, W_hh h + b_hh: reset_after, [T,B,3H] of its own (it differs from
  // the x side in the n block); reset_before, the same as the x side.
  T* dgates_h;
  T* d_rh;    // [B,H]: dL/d(r*h) of one step (reset_before)
  T* packed;  // W_hh in panels: all of it, or its r,z rows and its n rows apart (reset_before)
  // The packed last panels of the matrices read in place, each packed and read by the one member
  // owning it: for input_gradients, recurrent_weight_gradient and (reset_before) r*h.
  T* input_tails;
  T* recurrent_tails;
  T* rh_tail;
  // recurrent_noise.h (options only)
  T* dh_keep;     // [B,H]: a*dL/dh_t, the part of dL/dh_{t-1} that zoneout passes
  T* drop_scale;  // [B,H]: the recurrent dropout's keep / (1 - p)
  T* dh_gemm;     // [B,H]: dgates W_hh before the dropout's mask
  T* h_dropped;   // [T+1,B,H]: h0 and y dropped, for dW_hh
  int64_t size;
};

template <typename T>
GruBackwardScratch<T> gru_backward_scratch(T* base, const CellShape& s) {
  const int64_t TB = s.steps * s.batch, H = s.hidden, G = kGruGates * H;
  Carver<T> carve{base};
  GruBackwardScratch<T> b{};
  b.dgates_x = carve.take(TB * G);
  b.dgates_h = s.reset_after ? carve.take(TB * G) : b.dgates_x;
  b.d_rh = carve.take(s.reset_after ? 0 : s.batch * H);
  b.packed = carve.take(packed_weights_size(G, 1, H));
  b.input_tails = carve.take(input_gradients_scratch_size(G, TB));
  b.recurrent_tails = carve.take(recurrent_weight_gradient_scratch_size(s.steps, s.batch));
  b.rh_tail = carve.take(tail_panel_size(TB));
  const RecurrentNoise& noise = s.options.noise;
  b.dh_keep = carve.take(noise.zoneout_h > 0 ? s.batch * H : 0);
  b.drop_scale = carve.take(noise.dropout() ? s.batch * H : 0);
  b.dh_gemm = carve.take(noise.dropout() ? s.batch * H : 0);
  b.h_dropped = carve.take(noise.dropout() ? TB * H + s.batch * H : 0);
  b.size = carve.used;
  return b;
}
}  // namespace

int64_t gru_backward_scratch_size(const CellShape& s) {
  return gru_backward_scratch<float>(nullptr, s).size;
}

// The arguments and their shapes: recurrent_cell.h (CellBackwardArgs), gru.h.
template <typename T>
void gru_backward(const CellBackwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const int64_t G = kGruGates * H;
  const bool reset_after = a.shape.reset_after;
  const T *dy = a.dy, *x = a.x, *h0 = a.h0, *y = a.y, *w_ih = a.w.w_ih, *w_hh = a.w.w_hh;
  const int64_t* batch_sizes = a.batch_sizes;
  T* dh0 = a.dh0;
  const GruSaved<const T> saved = gru_saved(a.workspace, a.saved_steps, B, H).at(a.first_step);
  const GruBackwardScratch<T> scratch = gru_backward_scratch(a.scratch, a.shape);
  const auto& kernels = pointwise<T>();
  const CellOptions& options = a.shape.options;
  const RecurrentNoise& noise = options.noise;  // (needs options.enabled; dropout reset_after)
  const bool zoneout = options.enabled && noise.zoneout_h > 0;
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T *dgates_x = scratch.dgates_x, *dgates_h = scratch.dgates_h, *d_rh = scratch.d_rh;
  // forward: hproj = h_prev W_h^T over the blocks h_prev enters (all three, or r and z)
  const int64_t h_blocks = reset_after ? G : 2 * H;

  // dh0 carries dL/dh backwards in time and ends as dL/dh0; rows past their length at a step are
  // not touched, so dh_n reaches each row's last step.
  copy_or_zero(dh0, a.dh_n, B * H);
  if (noise.dropout()) recurrent_dropout_scale(noise, B, H, scratch.drop_scale);
  // The time loop on a team, split by units or rows as in lstm_backward. By units, the units a
  // member owns are the columns of dh_prev its panels of W_hh hold.
  run_team(recurrent_team_size(H, B * G * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, G * H * int64_t(sizeof(T)), !batch_sizes);
    const PackedWeights<T> w_h =
        backward_step_panels(step_kernel, scratch.packed, w_hh, h_blocks, H, split.packs, steps);
    T* packed_n = scratch.packed + packed_weights_size(h_blocks, 1, H);
    const PackedWeights<T> w_hn =  // reset_before: the n rows, which see r*h_prev
        reset_after ? w_h
                    : backward_step_panels(step_kernel, packed_n, w_hh + 2 * H * H, H, H,
                                           split.packs, steps);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
    for (int64_t t = steps - 1; t >= 0; --t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      const T* g = saved.gates + t * B * G + r0 * G + j0;
      const T* h_prev = t ? y + (t - 1) * B * H : h0;
      const T* dy_t = dy ? dy + t * B * H + at : nullptr;
      T* dgx = dgates_x + t * B * G;
      T* dgh = dgates_h + t * B * G;
      T* my_dgx = dgx + r0 * G + j0;
      if (zoneout) {  // forward: h = a*h_prev + (1-a)*h~: the passes below differentiate h~
        zoneout_gradients(noise, NoiseMask::zoneout_h, noise.zoneout_h, a.first_step + t, r0, rows,
                          j0, w, H, dh0 + at, dy_t, dh0 + at, scratch.dh_keep + at);
        dy_t = nullptr;
      }
      // forward (zoneout): h = a*h_prev + (1-a)*h~  ->  dL/dh_{t-1} so far += a*dL/dh_t
      const auto add_zoneout_part = [&] {
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t j = 0; j < w; ++j) dh0[at + b * H + j] += scratch.dh_keep[at + b * H + j];
      };
      if (reset_after) {
        if (options.enabled)
          kernels.gru_backward_options(options, rows, H, w, my_dgx, dgh + r0 * G + j0, dh0 + at,
                                       dy_t, g, saved.extra + t * B * H + at, h_prev + at);
        else
          kernels.gru_backward(rows, H, w, my_dgx, dgh + r0 * G + j0, dh0 + at, dy_t, g,
                               saved.extra + t * B * H + at, h_prev + at);
        if (zoneout) add_zoneout_part();
      } else {
        if (options.enabled)
          kernels.gru_rb_backward_state_options(options, rows, H, w, my_dgx, dh0 + at, dy_t, g,
                                                h_prev + at);
        else
          kernels.gru_rb_backward_state(rows, H, w, my_dgx, dh0 + at, dy_t, g, h_prev + at);
        if (zoneout) add_zoneout_part();
        split.share_step_results();  // d(r*h) reads every unit's n-gate gradient
        // forward: hproj_n = rh W_hn^T  ->  d_rh = dn_pre W_hn
        step_gemm(step_kernel, w_hn, 0, 1, split.units, rows, dgx + r0 * G + 2 * H, G,
                  d_rh + r0 * H, H, false);
        if (options.enabled)
          kernels.gru_rb_backward_gates_options(options, rows, H, w, my_dgx, dh0 + at, d_rh + at, g,
                                                h_prev + at);
        else
          kernels.gru_rb_backward_gates(rows, H, w, my_dgx, dh0 + at, d_rh + at, g, h_prev + at);
      }
      if (member == 0) {
        zero_rows(dgx, n, B, G);
        if (reset_after) zero_rows(dgh, n, B, G);
      }
      split.share_step_results();
      // forward: hproj = h_prev W_h^T  ->  dh_prev += dg W_h
      if (noise.dropout()) {  // forward: hproj = (h_prev * drop_scale) W_h^T
        step_gemm(step_kernel, w_h, 0, 1, split.units, rows, dgh + r0 * G, G,
                  scratch.dh_gemm + r0 * H, H, false);
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t j = 0; j < w; ++j) {
            const int64_t k = at + b * H + j;
            dh0[k] += scratch.drop_scale[k] * scratch.dh_gemm[k];
          }
      } else
        step_gemm(step_kernel, w_h, 0, 1, split.units, rows, dgh + r0 * G, G, dh0 + r0 * H, H,
                  true);
    }
  });

  // Everything that does not recur, over all steps at once, on a team of its own, each member its
  // share. forward: gates_x = x W_ih^T + b_ih, hproj = h_prev W_h^T + b_hh
  const int64_t TB = steps * B;
  // the h_{t-1} the recurrent GEMM read: h0, then y
  const std::pair<const T*, const T*> h_read = recurrent_inputs<T>(
      noise, a.g.dw_hh, h0, y, scratch.drop_scale, scratch.h_dropped, steps, B, H);
  const T *h_first = h_read.first, *h_seq = h_read.second;
  run_team(gemm_team_size(TB * G * (I + H)), [&](int member, int members) {
    const Team team{member, members};
    const bool fresh = a.g.fresh;
    input_gradients(team, a.dx, a.g.dw_ih, scratch.input_tails, dgates_x, G, G, x, w_ih, TB, I,
                    fresh);
    if (a.g.db_ih) add_column_sums(team, a.g.db_ih, dgates_x, TB, G, G, fresh);
    if (a.g.db_hh) add_column_sums(team, a.g.db_hh, dgates_h, TB, G, G, fresh);
    // the blocks that see h_{t-1}: all three, or r and z
    recurrent_weight_gradient(team, a.g.dw_hh, H, scratch.recurrent_tails, dgates_h, G, h_blocks,
                              h_seq, h_first, steps, B, H, fresh);
    if (!reset_after && a.g.dw_hh)  // the n block sees r*h_{t-1}, saved as rh [T*B,H]
      weight_gradient(team, a.g.dw_hh + 2 * H * H, H, scratch.rh_tail, dgates_h + 2 * H, G, H,
                      saved.extra, TB, H, !fresh);
  });
}

template void gru_backward<float>(const CellBackwardArgs<float>&);
template void gru_backward<double>(const CellBackwardArgs<double>&);

}  // namespace fusedrnn
