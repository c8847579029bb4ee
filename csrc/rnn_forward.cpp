#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "rnn.h"

namespace fusedrnn {

namespace {
// The scratch of a forward, in order (a null base only counts: rnn_forward_scratch_size).
template <typename T>
struct RnnForwardScratch {
  T* bias;       // [H]: b_ih + b_hh
  T* packed_hh;  // W_hh^T in panels
  T* packed_ih;  // W_ih^T in panels
  int64_t size;
};

template <typename T>
RnnForwardScratch<T> rnn_forward_scratch(T* base, const CellShape& s) {
  const int64_t H = s.hidden;
  Carver<T> carve{base};
  RnnForwardScratch<T> f{};
  f.bias = carve.take(H);
  f.packed_hh = carve.take(packed_weights_size(H, 1, H));
  f.packed_ih = carve.take(packed_weights_size(s.input, 1, H));
  f.size = carve.used;
  return f;
}
}  // namespace

int64_t rnn_forward_scratch_size(const CellShape& s) {
  return rnn_forward_scratch<float>(nullptr, s).size;
}

// The arguments and their shapes: recurrent_cell.h (CellForwardArgs), rnn.h.
template <typename T>
void rnn_forward(const CellForwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const T *x = a.x, *h0 = a.h0, *w_ih = a.w.w_ih, *w_hh = a.w.w_hh;
  const int64_t* batch_sizes = a.batch_sizes;
  T *y = a.y, *h_n = a.h_n;
  const RnnForwardScratch<T> scratch = rnn_forward_scratch(a.scratch, a.shape);
  const auto kernel = pointwise<T>().rnn_forward[static_cast<int>(a.shape.act)];
  const CellOptions& options = a.shape.options;
  T* saved_pre = options.enabled ? a.workspace : nullptr;  // [T,B,H] with options (training)
  const int64_t nr = step_gemm_kernels<T>().panel_width;
  const int64_t w_hh_bytes = H * H * int64_t(sizeof(T));  // (StepSplit)
  const InPlaceWeights in_place = in_place_weights<T>(steps, B, H, I, H);
  T* bias = scratch.bias;
  sum_biases(bias, a.w.b_ih, a.w.b_hh, H);
  // Every input's projection goes straight into y, in one GEMM; each step then adds W_hh h and
  // activates it.
  project_inputs(y, H, scratch.packed_ih, x, w_ih, steps * B, I, 1, H, false, a.w.half,
                 in_place.ih);
  // The time loop on a team (StepSplit): by units, with a barrier per step; or by rows.
  run_team(recurrent_team_size(H, B * H * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, w_hh_bytes, !batch_sizes, in_place.hh);
    const StepWeights<T> w_hh_t =
        step_weights(a.w.half, a.w.half ? a.w.half->w_hh : nullptr, scratch.packed_hh, w_hh, H, 1,
                     H, split.packs, in_place.hh, a.w.half ? a.w.half->w_hh_amx : nullptr);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    for (int64_t t = 0; t < steps; ++t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* h = y + t * B * H + r0 * H;
      step_gemm(w_hh_t, 0, 1, split.units, rows, (t ? h - B * H : h0 + r0 * H), H, h, H, true);
      if (options.enabled)
        pointwise<T>().rnn_forward_options(
            options, rows, H, w, bias + j0, h + j0,
            saved_pre ? saved_pre + t * B * H + r0 * H + j0 : nullptr);
      else
        kernel(rows, H, w, bias + j0, h + j0);
      if (member == 0) {  // rows past their length output zeros (and save them)
        zero_rows(y + t * B * H, n, B, H);
        if (saved_pre) zero_rows(saved_pre + t * B * H, n, B, H);
      }
      split.share_step_results();
    }
  });
  if (steps)
    gather_last_steps(h_n, y, batch_sizes, steps, B, H);
  else
    copy_or_zero(h_n, h0, B * H);
}

template void rnn_forward<float>(const CellForwardArgs<float>&);
template void rnn_forward<double>(const CellForwardArgs<double>&);

}  // namespace fusedrnn
