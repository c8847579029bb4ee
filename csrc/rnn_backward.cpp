#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "rnn.h"

namespace fusedrnn {

namespace {
// The scratch of a backward, in order (a null base only counts: rnn_backward_scratch_size).
template <typename T>
struct RnnBackwardScratch {
  T* dpre;    // [T,B,H]: the gradient of the pre-activations
  T* packed;  // W_hh in panels
  // The packed last panels of the matrices read in place (each packed and read by its owner).
  T* input_tails;
  T* recurrent_tails;
  int64_t size;
};

template <typename T>
RnnBackwardScratch<T> rnn_backward_scratch(T* base, const CellShape& s) {
  const int64_t TB = s.steps * s.batch, H = s.hidden;
  Carver<T> carve{base};
  RnnBackwardScratch<T> b{};
  b.dpre = carve.take(TB * H);
  b.packed = carve.take(packed_weights_size(H, 1, H));
  b.input_tails = carve.take(input_gradients_scratch_size(H, TB));
  b.recurrent_tails = carve.take(recurrent_weight_gradient_scratch_size(s.steps, s.batch));
  b.size = carve.used;
  return b;
}
}  // namespace

int64_t rnn_backward_scratch_size(const CellShape& s) {
  return rnn_backward_scratch<float>(nullptr, s).size;
}

// The arguments and their shapes: recurrent_cell.h (CellBackwardArgs), rnn.h.
template <typename T>
void rnn_backward(const CellBackwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const T *dy = a.dy, *x = a.x, *h0 = a.h0, *y = a.y, *w_ih = a.w.w_ih, *w_hh = a.w.w_hh;
  const int64_t* batch_sizes = a.batch_sizes;
  T* dh0 = a.dh0;
  const RnnBackwardScratch<T> scratch = rnn_backward_scratch(a.scratch, a.shape);
  const auto kernel = pointwise<T>().rnn_backward[static_cast<int>(a.shape.act)];
  const CellOptions& options = a.shape.options;
  // with options: the pre-activations [saved_steps,B,H] the forward saved, from first_step on
  const T* saved_pre = options.enabled ? a.workspace + a.first_step * B * H : nullptr;
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* dpre = scratch.dpre;
  // dh0 carries dL/dh backwards in time and ends as dL/dh0; rows past their length at a step are
  // not touched, so dh_n reaches each row's last step.
  copy_or_zero(dh0, a.dh_n, B * H);
  // The time loop on a team (StepSplit). By units, each member owns hidden units [j0, j0 + w): it
  // computes their pre-activation gradients, then (after a barrier, since it needs all of them)
  // their dh_prev, with its panels of W_hh. By rows, each member does both for its own rows.
  run_team(recurrent_team_size(H, B * H * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, H * H * int64_t(sizeof(T)), !batch_sizes);
    const PackedWeights<T> w_hh_panels =
        backward_step_panels(step_kernel, scratch.packed, w_hh, H, H, split.packs, steps);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
    for (int64_t t = steps - 1; t >= 0; --t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* dp = dpre + t * B * H;
      const T* dy_at = dy ? dy + t * B * H + at : nullptr;
      if (options.enabled)
        pointwise<T>().rnn_backward_options(options, rows, H, w, dp + at, dh0 + at, dy_at,
                                            saved_pre + t * B * H + at);
      else
        kernel(rows, H, w, dp + at, dh0 + at, dy_at, y + t * B * H + at);
      if (member == 0) zero_rows(dp, n, B, H);
      split.share_step_results();
      // forward: pre += h_prev W_hh^T  ->  dh_prev = dpre W_hh (running rows only)
      step_gemm(step_kernel, w_hh_panels, 0, 1, split.units, rows, dp + r0 * H, H, dh0 + r0 * H, H,
                false);
    }
  });

  // Everything that does not recur, over all steps at once, on a team of its own, each member its
  // share. forward: pre = x W_ih^T + b_ih + h_prev W_hh^T + b_hh
  const int64_t TB = steps * B;
  run_team(gemm_team_size(TB * H * (I + H)), [&](int member, int members) {
    const Team team{member, members};
    const bool fresh = a.g.fresh;
    input_gradients(team, a.dx, a.g.dw_ih, scratch.input_tails, dpre, H, H, x, w_ih, TB, I, fresh);
    recurrent_weight_gradient(team, a.g.dw_hh, H, scratch.recurrent_tails, dpre, H, H, y, h0, steps,
                              B, H, fresh);
    add_column_sums(team, a.g.db_ih, a.g.db_hh, dpre, TB, H, H, fresh);
  });
}

template void rnn_backward<float>(const CellBackwardArgs<float>&);
template void rnn_backward<double>(const CellBackwardArgs<double>&);

}  // namespace fusedrnn
