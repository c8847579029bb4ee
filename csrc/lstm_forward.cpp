#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"

namespace fusedrnn {

int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H, int64_t P) {
  return T * B * (P ? 6 : 5) * H;
}

int64_t lstm_forward_scratch_size(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                                  bool training) {
  // the summed bias, W_hh^T, W_ih^T (and W_hr^T) in panels
  const int64_t fixed = 4 * H + packed_weights_size(P ? P : H, 4, H) +
                        packed_weights_size(I, 4, H) + (P ? packed_weights_size(H, 1, P) : 0);
  if (training) return fixed;
  return fixed + (P ? B * H : 0) + projection_chunk_steps(T, B) * B * 4 * H;
}

// x: [T,B,I]  h0: [B,R]  c0: [B,H]  w_ih: [4H,I]  w_hh: [4H,R]  b_ih, b_hh: [4H] or null
// w_hr: [P,H] or null  batch_sizes: [T] or null
// y: [T,B,R]  h_n: [B,R]  c_n: [B,H]  saved: the workspace's parts or null  scratch: see above
template <typename T>
void lstm_forward(T* y, T* h_n, T* c_n, LstmSaved<T> saved, T* scratch, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                  const T* w_hr, const int64_t* batch_sizes, int64_t steps, int64_t B, int64_t I,
                  int64_t H, int64_t P) {
  const int64_t G = 4 * H, R = P ? P : H;
  const auto& kernels = pointwise<T>();
  const auto& step_kernel = step_gemm_kernels<T>();
  const int64_t nr = step_kernel.panel_width;
  const bool training = saved.gates != nullptr;
  T* bias = scratch;
  sum_biases(bias, b_ih, b_hh, G);
  T* packed_hh = bias + G;                                        // W_hh^T in panels
  T* packed_ih = packed_hh + packed_weights_size(R, 4, H);        // W_ih^T in panels
  T* packed_hr = packed_ih + packed_weights_size(I, 4, H);        // W_hr^T in panels
  T* m_step = packed_hr + (P ? packed_weights_size(H, 1, P) : 0);  // inference: m of one step
  T* proj = m_step + (P && !training ? B * H : 0);               // inference: projected chunk
  const int64_t chunk = training ? steps : projection_chunk_steps(steps, B);

  if (!training) copy_or_zero(c_n, c0, B * H);  // inference updates c in place in c_n

  // Training: every step's input projection in one GEMM, straight into the saved gates.
  if (training) project_inputs(saved.gates, G, packed_ih, x, w_ih, steps * B, I, 4, H);

  // The time loop on a team (StepSplit): by units, each member owns the hidden units
  // [j0, j0 + w) of every gate that its panels of W_hh^T hold (and the outputs of a projection its
  // panels of W_hr^T hold), does their share of each GEMM and of the fused pass, and a barrier
  // per step publishes h_t to all; by rows, each member runs its rows through every unit.
  run_team(recurrent_team_size(H, B * G * R, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, G * R * int64_t(sizeof(T)), !batch_sizes && !P);
    const auto [w_hh_t, w_ih_t] = pack_gate_loop_weights(split.packs, 4, H, packed_hh, w_hh, R,
                                                        packed_ih, w_ih, I, training);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    // With a projection: this member's outputs of h = m W_hr^T, whole panels of W_hr^T.
    const PanelShare outputs = panel_share(P, nr, member, members);
    const PackedWeights<T> w_hr_t =
        P ? pack_weights(step_kernel, packed_hr, w_hr, 1, H, H, 1, P, outputs) : PackedWeights<T>{};
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* gates = training ? saved.gates + t * B * G : proj + (t % chunk) * B * G;
      if (!training && t % chunk == 0) {  // this member's columns of the next chunk's projection
        const int64_t n_steps = std::min(chunk, steps - t);
        project_chunk(split, step_kernel, w_ih_t, 4, n_steps * B, x + t * B * I, I, proj, G);
      }
      const T* h_prev = t ? y + (t - 1) * B * R : h0;
      const T* c_prev = training ? (t ? saved.c + (t - 1) * B * H : c0) : c_n;
      T* c = training ? saved.c + t * B * H : c_n;
      T* m = P ? (training ? saved.m + t * B * H : m_step) : nullptr;
      T* h = y + t * B * R;
      // gates += h_prev W_hh^T; then bias, nonlinearities and c = f*c_prev + i*g, h = o*tanh(c)
      step_gemm(step_kernel, w_hh_t, 0, 4, split.units, rows, h_prev + r0 * R, R, gates + r0 * G,
                G, true);
      kernels.lstm_forward(rows, H, w, bias + j0, gates + r0 * G + j0, c_prev + r0 * H + j0,
                           c + r0 * H + j0, (P ? m + r0 * H : h + r0 * R) + j0);
      if (P) {  // h = m W_hr^T needs every unit of m
        team_barrier();
        step_gemm(step_kernel, w_hr_t, 0, 1, outputs, n, m, H, h, P, false);
      }
      if (member == 0) {  // rows past their length: zero outputs and saved entries
        zero_rows(h, n, B, R);
        if (training) {
          zero_rows(gates, n, B, G);
          zero_rows(c, n, B, H);
          if (P) zero_rows(m, n, B, H);
        }
      }
      split.share_step_results();
    }
  });

  if (steps) {
    gather_last_steps(h_n, y, batch_sizes, steps, B, R);
    if (training) gather_last_steps(c_n, saved.c, batch_sizes, steps, B, H);
  } else {
    copy_or_zero(h_n, h0, B * R);
    copy_or_zero(c_n, c0, B * H);
  }
}

#define FUSEDRNN_LSTM_FORWARD(T)                                                                \
  template void lstm_forward<T>(T*, T*, T*, LstmSaved<T>, T*, const T*, const T*, const T*,      \
                                const T*, const T*, const T*, const T*, const T*, const int64_t*, \
                                int64_t, int64_t, int64_t, int64_t, int64_t);
FUSEDRNN_LSTM_FORWARD(float)
FUSEDRNN_LSTM_FORWARD(double)

}  // namespace fusedrnn
