#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "rnn.h"

namespace fusedrnn {

int64_t rnn_forward_scratch_size(int64_t I, int64_t H) {
  return H + packed_weights_size(H, 1, H) + packed_weights_size(I, 1, H);
}

// x: [T,B,I]  h0: [B,H]  w_ih: [H,I]  w_hh: [H,H]  b_ih, b_hh: [H]
// y: [T,B,H]  h_n: [B,H]  scratch: the summed bias [H], W_hh^T and W_ih^T in panels
template <typename T>
void rnn_forward(T* y, T* h_n, T* scratch, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                 const T* b_ih, const T* b_hh, const int64_t* batch_sizes, int64_t steps, int64_t B,
                 int64_t I, int64_t H, RnnActivation act) {
  const auto kernel = pointwise<T>().rnn_forward[static_cast<int>(act)];
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* bias = scratch;
  T* packed_hh = scratch + H;
  T* packed_ih = packed_hh + packed_weights_size(H, 1, H);
  sum_biases(bias, b_ih, b_hh, H);
  // Every input's projection goes straight into y, in one GEMM; each step then adds W_hh h and
  // activates it.
  project_inputs(y, H, packed_ih, x, w_ih, steps * B, I, 1, H);
  // The time loop on a team (StepSplit): by units, with a barrier per step; or by rows.
  run_team(recurrent_team_size(H, B * H * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, H * H * int64_t(sizeof(T)), !batch_sizes);
    const PackedWeights<T> w_hh_t =
        pack_weights(step_kernel, packed_hh, w_hh, 1, H, H, 1, H, split.packs);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* h = y + t * B * H + r0 * H;
      step_gemm(step_kernel, w_hh_t, 0, 1, split.units, rows, (t ? h - B * H : h0 + r0 * H), H, h,
                H, true);
      kernel(rows, H, w, bias + j0, h + j0);
      if (member == 0) zero_rows(y + t * B * H, n, B, H);  // rows past their length output zeros
      split.share_step_results();
    }
  });
  if (steps)
    gather_last_steps(h_n, y, batch_sizes, steps, B, H);
  else
    copy_or_zero(h_n, h0, B * H);
}

#define FUSEDRNN_RNN_FORWARD(T)                                                                 \
  template void rnn_forward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,    \
                               const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t,    \
                               RnnActivation);
FUSEDRNN_RNN_FORWARD(float)
FUSEDRNN_RNN_FORWARD(double)

}  // namespace fusedrnn
