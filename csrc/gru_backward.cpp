#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "gru.h"

namespace fusedrnn {

int64_t gru_backward_scratch_size(int64_t T, int64_t B, int64_t H, bool reset_after) {
  // reset_after: the gate gradients of the x side and of the h side differ in the n block.
  // W_hh in panels: all of it, or its r,z rows and its n rows apart (reset_before).
  // The gradient GEMMs' packed last panels: input_gradients, recurrent_weight_gradient and, for
  // reset_before, the r*h of the n block.
  return (reset_after ? 2 * T * B * 3 * H : T * B * 3 * H + B * H) +
         packed_weights_size(3 * H, 1, H) + input_gradients_scratch_size(3 * H, T * B) +
         recurrent_weight_gradient_scratch_size(T, B) + tail_panel_size(T * B);
}

// dy: [T,B,H] or null  dh_n: [B,H] or null  x: [T,B,I]  h0: [B,H]  w_ih: [3H,I]  w_hh: [3H,H]
// y: [T,B,H]  saved: gates [T,B,3H], hn or rh [T,B,H]
// dx: [T,B,I] (=)  dh0: [B,H] (=)  dw_ih, dw_hh, db_ih, db_hh (+=)  scratch: gru_backward_scratch_size
template <typename T>
void gru_backward(T* dx, T* dh0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch, const T* dy,
                  const T* dh_n, const T* x, const T* h0, const T* w_ih, const T* w_hh,
                  const T* y, GruSaved<const T> saved, const int64_t* batch_sizes, int64_t steps,
                  int64_t B, int64_t I, int64_t H, bool reset_after) {
  const int64_t G = 3 * H;
  const auto& kernels = pointwise<T>();
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* dgates_x = scratch;  // gradient of W_ih x + b_ih, [T,B,3H]
  // Gradient of the h side: W_hh h + b_hh (reset_after), or the same as the x side (reset_before).
  T* dgates_h = reset_after ? scratch + steps * B * G : dgates_x;
  T* d_rh = scratch + steps * B * G;  // reset_before: dL/d(r*h) of one step
  T* packed = reset_after ? dgates_h + steps * B * G : d_rh + B * H;
  // The packed last panels of the matrices read in place, each packed and read by the one member
  // owning it: for input_gradients, recurrent_weight_gradient and (reset_before) r*h.
  T* input_tails = packed + packed_weights_size(G, 1, H);
  T* recurrent_tails = input_tails + input_gradients_scratch_size(G, steps * B);
  T* rh_tail = recurrent_tails + recurrent_weight_gradient_scratch_size(steps, B);
  // forward: hproj = h_prev W_h^T over the blocks h_prev enters (all three, or r and z)
  const int64_t h_blocks = reset_after ? G : 2 * H;

  // dh0 carries dL/dh backwards in time and ends as dL/dh0; rows past their length at a step are
  // not touched, so dh_n reaches each row's last step.
  copy_or_zero(dh0, dh_n, B * H);
  // The time loop on a team, split by units or rows as in lstm_backward. By units, the units a
  // member owns are the columns of dh_prev its panels of W_hh hold.
  run_team(recurrent_team_size(H, B * G * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, G * H * int64_t(sizeof(T)), !batch_sizes);
    const PackedWeights<T> w_h =
        pack_weights(step_kernel, packed, w_hh, H, 1, h_blocks, 1, H, split.packs);
    const PackedWeights<T> w_hn =  // reset_before: the n rows, which see r*h_prev
        reset_after ? w_h
                    : pack_weights(step_kernel, packed + packed_weights_size(h_blocks, 1, H),
                                   w_hh + 2 * H * H, H, 1, H, 1, H, split.packs);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      const T* g = saved.gates + t * B * G + r0 * G + j0;
      const T* h_prev = t ? y + (t - 1) * B * H : h0;
      const T* dy_t = dy ? dy + t * B * H + at : nullptr;
      T* dgx = dgates_x + t * B * G;
      T* dgh = dgates_h + t * B * G;
      T* my_dgx = dgx + r0 * G + j0;
      if (reset_after) {
        kernels.gru_backward(rows, H, w, my_dgx, dgh + r0 * G + j0, dh0 + at, dy_t, g,
                             saved.extra + t * B * H + at, h_prev + at);
      } else {
        kernels.gru_rb_backward_state(rows, H, w, my_dgx, dh0 + at, dy_t, g, h_prev + at);
        split.share_step_results();  // d(r*h) reads every unit's n-gate gradient
        // forward: hproj_n = rh W_hn^T  ->  d_rh = dn_pre W_hn
        step_gemm(step_kernel, w_hn, 0, 1, split.units, rows, dgx + r0 * G + 2 * H, G,
                  d_rh + r0 * H, H, false);
        kernels.gru_rb_backward_gates(rows, H, w, my_dgx, dh0 + at, d_rh + at, g, h_prev + at);
      }
      if (member == 0) {
        zero_rows(dgx, n, B, G);
        if (reset_after) zero_rows(dgh, n, B, G);
      }
      split.share_step_results();
      // forward: hproj = h_prev W_h^T  ->  dh_prev += dg W_h
      step_gemm(step_kernel, w_h, 0, 1, split.units, rows, dgh + r0 * G, G, dh0 + r0 * H, H, true);
    }
  });

  // Everything that does not recur, over all steps at once, on a team of its own, each member its
  // share. forward: gates_x = x W_ih^T + b_ih, hproj = h_prev W_h^T + b_hh
  const int64_t TB = steps * B;
  run_team(gemm_team_size(TB * G * (I + H)), [&](int member, int members) {
    const Team team{member, members};
    input_gradients(team, dx, dw_ih, input_tails, dgates_x, G, G, x, w_ih, TB, I);
    if (db_ih) add_column_sums(team, db_ih, dgates_x, TB, G, G);
    if (db_hh) add_column_sums(team, db_hh, dgates_h, TB, G, G);
    // the blocks that see h_{t-1}: all three, or r and z
    recurrent_weight_gradient(team, dw_hh, H, recurrent_tails, dgates_h, G, h_blocks, y, h0, steps,
                              B, H);
    if (!reset_after) {  // the n block sees r*h_{t-1}, saved as rh [T*B,H]
      const PanelShare share = panel_share(H, nr, member, members);
      const PackedWeights<T> rh =
          in_place_panels(step_kernel, saved.extra, H, TB, H, rh_tail, share);
      step_gemm(step_kernel, rh, 0, 1, share, H, dgates_h + 2 * H, G, dw_hh + 2 * H * H, H, true,
                true);
    }
  });
}

#define FUSEDRNN_GRU_BACKWARD(T)                                                                \
  template void gru_backward<T>(T*, T*, T*, T*, T*, T*, T*, const T*, const T*, const T*,       \
                                const T*, const T*, const T*, const T*, GruSaved<const T>,      \
                                const int64_t*,                                                 \
                                int64_t, int64_t, int64_t, int64_t, bool);
FUSEDRNN_GRU_BACKWARD(float)
FUSEDRNN_GRU_BACKWARD(double)

}  // namespace fusedrnn
