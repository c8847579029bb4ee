#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "rnn.h"

namespace fusedrnn {

int64_t rnn_backward_scratch_size(int64_t T, int64_t B, int64_t H) {
  // dpre, W_hh in panels, the gradient GEMMs' packed last panels
  return T * B * H + packed_weights_size(H, 1, H) + input_gradients_scratch_size(H, T * B) +
         recurrent_weight_gradient_scratch_size(T, B);
}

// dy: [T,B,H] or null  dh_n: [B,H] or null  x: [T,B,I]  h0: [B,H]  w_ih: [H,I]  w_hh: [H,H]
// y: [T,B,H]  dx: [T,B,I] (=)  dh0: [B,H] (=)  dw_ih, dw_hh, db_ih, db_hh (+=)
// scratch: dpre [T,B,H], W_hh in panels
template <typename T>
void rnn_backward(T* dx, T* dh0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch, const T* dy,
                  const T* dh_n, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                  const T* y, const int64_t* batch_sizes, int64_t steps, int64_t B, int64_t I,
                  int64_t H, RnnActivation act) {
  const auto kernel = pointwise<T>().rnn_backward[static_cast<int>(act)];
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* dpre = scratch;
  T* packed = dpre + steps * B * H;
  // The packed last panels of the matrices read in place (each packed and read by its owner).
  T* input_tails = packed + packed_weights_size(H, 1, H);
  T* recurrent_tails = input_tails + input_gradients_scratch_size(H, steps * B);
  // dh0 carries dL/dh backwards in time and ends as dL/dh0; rows past their length at a step are
  // not touched, so dh_n reaches each row's last step.
  copy_or_zero(dh0, dh_n, B * H);
  // The time loop on a team (StepSplit). By units, each member owns hidden units [j0, j0 + w): it
  // computes their pre-activation gradients, then (after a barrier, since it needs all of them)
  // their dh_prev, with its panels of W_hh. By rows, each member does both for its own rows.
  run_team(recurrent_team_size(H, B * H * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, H * H * int64_t(sizeof(T)), !batch_sizes);
    const PackedWeights<T> w_hh_packed =
        pack_weights(step_kernel, packed, w_hh, H, 1, H, 1, H, split.packs);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* dp = dpre + t * B * H;
      kernel(rows, H, w, dp + at, dh0 + at, dy ? dy + t * B * H + at : nullptr, y + t * B * H + at);
      if (member == 0) zero_rows(dp, n, B, H);
      split.share_step_results();
      // forward: pre += h_prev W_hh^T  ->  dh_prev = dpre W_hh (running rows only)
      step_gemm(step_kernel, w_hh_packed, 0, 1, split.units, rows, dp + r0 * H, H, dh0 + r0 * H, H,
                false);
    }
  });

  // Everything that does not recur, over all steps at once, on a team of its own, each member its
  // share. forward: pre = x W_ih^T + b_ih + h_prev W_hh^T + b_hh
  const int64_t TB = steps * B;
  run_team(gemm_team_size(TB * H * (I + H)), [&](int member, int members) {
    const Team team{member, members};
    input_gradients(team, dx, dw_ih, input_tails, dpre, H, H, x, w_ih, TB, I);
    recurrent_weight_gradient(team, dw_hh, H, recurrent_tails, dpre, H, H, y, h0, steps, B, H);
    add_column_sums(team, db_ih, db_hh, dpre, TB, H, H);
  });
}

#define FUSEDRNN_RNN_BACKWARD(T)                                                                \
  template void rnn_backward<T>(T*, T*, T*, T*, T*, T*, T*, const T*, const T*, const T*,       \
                                const T*, const T*, const T*, const T*, const int64_t*, int64_t, \
                                int64_t, int64_t, int64_t, RnnActivation);
FUSEDRNN_RNN_BACKWARD(float)
FUSEDRNN_RNN_BACKWARD(double)

}  // namespace fusedrnn
