#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"

namespace fusedrnn {

int64_t lstm_backward_scratch_size(int64_t T, int64_t B, int64_t H, int64_t P) {
  // dgates [T,B,4H]; with a projection also dL/dh per step [T,B,P] and dL/dm of one step [B,H];
  // W_hh packed in panels; the gradient GEMMs' packed last panels (with a projection also those
  // of W_hr and of m, read in place)
  const int64_t R = P ? P : H;
  return T * B * 4 * H + (P ? T * B * P + B * H : 0) + packed_weights_size(4 * H, 1, R) +
         input_gradients_scratch_size(4 * H, T * B) + recurrent_weight_gradient_scratch_size(T, B) +
         (P ? tail_panel_size(P) + tail_panel_size(T * B) : 0);
}

// dy: [T,B,R] or null  dh_n: [B,R] or null  dc_n: [B,H] or null  x: [T,B,I]  h0: [B,R]
// c0: [B,H]  w_ih: [4H,I]  w_hh: [4H,R]  w_hr: [P,H] or null  y: [T,B,R]
// saved: gates [T,B,4H], c [T,B,H], (m [T,B,H])  batch_sizes: [T] or null
// dx: [T,B,I] (=)  dh0: [B,R] (=)  dc0: [B,H] (=)  dw_ih, dw_hh, db_ih, db_hh, dw_hr (+=)
template <typename T>
void lstm_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* dw_hr,
                   T* scratch, const T* dy, const T* dh_n, const T* dc_n, const T* x, const T* h0,
                   const T* c0, const T* w_ih, const T* w_hh, const T* w_hr, const T* y,
                   LstmSaved<const T> saved, const int64_t* batch_sizes, int64_t steps, int64_t B,
                   int64_t I, int64_t H, int64_t P) {
  const int64_t G = 4 * H, R = P ? P : H;
  const auto& kernels = pointwise<T>();
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  T* dgates = scratch;
  T* dhs = dgates + steps * B * G;  // projection only: dL/dh_t, all steps, for dW_hr
  T* dm = dhs + (P ? steps * B * R : 0);  // projection only: dL/dm_t of the current step
  T* packed = dm + (P ? B * H : 0);       // W_hh in panels
  // The packed last panels of the matrices read in place, each packed and read by the one member
  // owning it: for input_gradients, recurrent_weight_gradient, W_hr and m (projection only).
  T* input_tails = packed + packed_weights_size(G, 1, R);
  T* recurrent_tails = input_tails + input_gradients_scratch_size(G, steps * B);
  T* hr_tail = recurrent_tails + recurrent_weight_gradient_scratch_size(steps, B);
  T* m_tail = hr_tail + (P ? tail_panel_size(P) : 0);

  // dh0 and dc0 carry the state gradients backwards in time and end as dL/dh0, dL/dc0. Rows
  // past their length at a step are not touched, so dh_n / dc_n reach each row's last step.
  copy_or_zero(dh0, dh_n, B * R);
  copy_or_zero(dc0, dc_n, B * H);
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
        pack_weights(step_kernel, packed, w_hh, R, 1, G, 1, R, columns);
    split.wait_for_all_panels();
    const PanelShare& dh_columns = split.by_rows ? split.units : columns;  // (R = H by rows)
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const PackedWeights<T> w_hr_panels =  // W_hr [P,H] read in place: dm = dh W_hr
        P ? in_place_panels(step_kernel, w_hr, H, P, H, hr_tail, split.units) : PackedWeights<T>{};
    const int64_t p0 = columns.begin, pw = columns.width;  // with a projection, R = P
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* dg = dgates + t * B * G;
      const T* c_prev = t ? saved.c + (t - 1) * B * H : c0;
      const T* dy_t = dy ? dy + t * B * R : nullptr;
      const T* dh = dh0;  // dL/d(o*tanh(c)) as the pass reads it
      if (P) {
        // forward: h = m W_hr^T  ->  dm = (dh_carry + dy) W_hr
        T* dh_t = dhs + t * B * R;
        for (int64_t b = 0; b < n; ++b)
          for (int64_t k = p0; k < p0 + pw; ++k)
            dh_t[b * R + k] = dh0[b * R + k] + (dy_t ? dy_t[b * R + k] : T(0));
        if (member == 0) zero_rows(dh_t, n, B, R);
        team_barrier();
        step_gemm(step_kernel, w_hr_panels, 0, 1, split.units, n, dh_t, P, dm, H, false);
        dh = dm;
        dy_t = nullptr;
      }
      const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
      kernels.lstm_backward(rows, H, w, dg + r0 * G + j0, dc0 + at, dh + r0 * R + j0,
                            dy_t ? dy_t + r0 * R + j0 : nullptr,
                            saved.gates + t * B * G + r0 * G + j0, saved.c + t * B * H + at,
                            c_prev + at);
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
    input_gradients(team, dx, dw_ih, input_tails, dgates, G, G, x, w_ih, TB, I);
    recurrent_weight_gradient(team, dw_hh, R, recurrent_tails, dgates, G, G, y, h0, steps, B, R);
    add_column_sums(team, db_ih, db_hh, dgates, TB, G, G);
    if (P) {  // forward: h = m W_hr^T  ->  dW_hr += dh^T m, this member's columns of m
      const PanelShare share = panel_share(H, nr, member, members);
      const PackedWeights<T> ms =
          in_place_panels(step_kernel, saved.m, H, TB, H, m_tail, share);
      step_gemm(step_kernel, ms, 0, 1, share, P, dhs, P, dw_hr, H, true, true);
    }
  });
}

#define FUSEDRNN_LSTM_BACKWARD(T)                                                               \
  template void lstm_backward<T>(T*, T*, T*, T*, T*, T*, T*, T*, T*, const T*, const T*,        \
                                 const T*, const T*, const T*, const T*, const T*, const T*,    \
                                 const T*, const T*, LstmSaved<const T>, const int64_t*,        \
                                 int64_t, int64_t, int64_t, int64_t, int64_t);
FUSEDRNN_LSTM_BACKWARD(float)
FUSEDRNN_LSTM_BACKWARD(double)

}  // namespace fusedrnn
