#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "gru.h"

namespace fusedrnn {

int64_t gru_workspace_size(int64_t T, int64_t B, int64_t H) { return T * B * 4 * H; }

int64_t gru_forward_scratch_size(int64_t T, int64_t B, int64_t I, int64_t H, bool training) {
  // both biases, the recurrent projections of a step, W_hh^T and W_ih^T in panels
  const int64_t fixed =
      2 * 3 * H + B * 3 * H + packed_weights_size(H, 3, H) + packed_weights_size(I, 3, H);
  return training ? fixed : fixed + B * H + projection_chunk_steps(T, B) * B * 3 * H;
}

// x: [T,B,I]  h0: [B,H]  w_ih: [3H,I]  w_hh: [3H,H]  b_ih, b_hh: [3H]
// y: [T,B,H]  h_n: [B,H]  saved: the workspace's parts or null  scratch: gru_forward_scratch_size
template <typename T>
void gru_forward(T* y, T* h_n, GruSaved<T> saved, T* scratch, const T* x, const T* h0,
                 const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                 const int64_t* batch_sizes, int64_t steps, int64_t B, int64_t I, int64_t H,
                 bool reset_after) {
  const int64_t G = 3 * H;
  const auto& kernels = pointwise<T>();
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  const bool training = saved.gates != nullptr;
  T* bias_ih = scratch;  // the biases, or zeros for a layer without
  T* bias_hh = bias_ih + G;
  copy_or_zero(bias_ih, b_ih, G);
  copy_or_zero(bias_hh, b_hh, G);
  T* hproj = bias_hh + G;  // [B,3H]: W_hh h (reset_after), or W_h{r,z} h [B,2H] and W_hn (r*h) [B,H]
  T* hproj_n = hproj + B * 2 * H;
  T* packed_hh = hproj + B * G;                              // W_hh^T in panels
  T* packed_ih = packed_hh + packed_weights_size(H, 3, H);   // W_ih^T in panels
  T* extra_step = packed_ih + packed_weights_size(I, 3, H);  // inference: hn or r*h of one step
  T* proj = extra_step + B * H;   // inference: projected chunk
  const int64_t chunk = training ? steps : projection_chunk_steps(steps, B);

  // Training: every step's input projection in one GEMM, straight into the saved gates.
  if (training) project_inputs(saved.gates, G, packed_ih, x, w_ih, steps * B, I, 3, H);

  // The time loop on a team, split by units or rows as in lstm_forward. By units, the Cho
  // variant needs all of r*h before its second GEMM: a second barrier.
  run_team(recurrent_team_size(H, B * G * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, G * H * int64_t(sizeof(T)), !batch_sizes);
    const auto [w_hh_t, w_ih_t] = pack_gate_loop_weights(split.packs, 3, H, packed_hh, w_hh, H,
                                                        packed_ih, w_ih, I, training);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* gates = training ? saved.gates + t * B * G : proj + (t % chunk) * B * G;
      if (!training && t % chunk == 0) {
        const int64_t n_steps = std::min(chunk, steps - t);
        project_chunk(split, step_kernel, w_ih_t, 3, n_steps * B, x + t * B * I, I, proj, G);
      }
      const T* h_prev = t ? y + (t - 1) * B * H : h0;
      T* extra = training ? saved.extra + t * B * H : extra_step;  // hn or r*h
      T* h = y + t * B * H;
      T* my_gates = gates + r0 * G + j0;
      if (reset_after) {
        step_gemm(step_kernel, w_hh_t, 0, 3, split.units, rows, h_prev + r0 * H, H,
                  hproj + r0 * G, G, false);
        kernels.gru_forward(rows, H, w, bias_ih + j0, bias_hh + j0, my_gates, hproj + r0 * G + j0,
                            h_prev + at, extra + at, h + at);
      } else {
        step_gemm(step_kernel, w_hh_t, 0, 2, split.units, rows, h_prev + r0 * H, H,
                  hproj + r0 * 2 * H, 2 * H, false);
        kernels.gru_rb_forward_gates(rows, H, w, bias_ih + j0, bias_hh + j0, my_gates,
                                     hproj + r0 * 2 * H + j0, h_prev + at, extra + at);
        split.share_step_results();  // W_hn (r*h) reads every unit of r*h
        step_gemm(step_kernel, w_hh_t, 2, 1, split.units, rows, extra + r0 * H, H,
                  hproj_n + r0 * H, H, false);
        kernels.gru_rb_forward_state(rows, H, w, bias_ih + j0, bias_hh + j0, my_gates,
                                     hproj_n + at, h_prev + at, h + at);
      }
      if (member == 0) {  // rows past their length: zero outputs and saved entries
        zero_rows(h, n, B, H);
        if (training) {
          zero_rows(gates, n, B, G);
          zero_rows(extra, n, B, H);
        }
      }
      split.share_step_results();
    }
  });

  if (steps)
    gather_last_steps(h_n, y, batch_sizes, steps, B, H);
  else
    copy_or_zero(h_n, h0, B * H);
}

#define FUSEDRNN_GRU_FORWARD(T)                                                                  \
  template void gru_forward<T>(T*, T*, GruSaved<T>, T*, const T*, const T*, const T*, const T*,  \
                               const T*,                                                         \
                               const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, bool);
FUSEDRNN_GRU_FORWARD(float)
FUSEDRNN_GRU_FORWARD(double)

}  // namespace fusedrnn
