#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "gru.h"
#include "recurrent_noise.h"

namespace fusedrnn {

int64_t gru_workspace_size(int64_t T, int64_t B, int64_t H) {
  int64_t size = 0;
  gru_saved<float>(nullptr, T, B, H, &size);
  return size;
}

namespace {
// The scratch of a forward, in order (a null base only counts: gru_forward_scratch_size).
template <typename T>
struct GruForwardScratch {
  T* bias_ih;     // [3H]: b_ih, or zeros for a layer without
  T* bias_hh;     // [3H]: b_hh, or zeros
  T* hproj;       // [B,3H]: W_hh h (reset_after), or W_h{r,z} h [B,2H] and W_hn (r*h) [B,H]
  T* packed_hh;   // W_hh^T in panels
  T* packed_ih;   // W_ih^T in panels
  T* extra_step;  // [B,H]: hn or r*h of one step (inference)
  T* proj;        // [chunk,B,3H]: the input projection of a chunk of steps (inference)
  T* drop_scale;  // [B,H]: the recurrent dropout's keep / (1 - p) (recurrent_noise.h)
  T* h_dropped;   // [2,B,H]: h_{t-1} * drop_scale as the GEMM reads it, by step parity
  int64_t size;
};

template <typename T>
GruForwardScratch<T> gru_forward_scratch(T* base, const CellShape& s, bool training) {
  const int64_t B = s.batch, H = s.hidden, G = kGruGates * H;
  Carver<T> carve{base};
  GruForwardScratch<T> f{};
  f.bias_ih = carve.take(G);
  f.bias_hh = carve.take(G);
  f.hproj = carve.take(B * G);
  f.packed_hh = carve.take(packed_weights_size(H, kGruGates, H));
  f.packed_ih = carve.take(packed_weights_size(s.input, kGruGates, H));
  f.extra_step = carve.take(training ? 0 : B * H);
  f.proj = carve.take(training ? 0 : projection_chunk_steps(s.steps, B) * B * G);
  f.drop_scale = carve.take(s.options.noise.dropout() ? B * H : 0);
  f.h_dropped = carve.take(s.options.noise.dropout() ? 2 * B * H : 0);
  f.size = carve.used;
  return f;
}
}  // namespace

int64_t gru_forward_scratch_size(const CellShape& s, bool training) {
  return gru_forward_scratch<float>(nullptr, s, training).size;
}

// The arguments and their shapes: recurrent_cell.h (CellForwardArgs), gru.h.
template <typename T>
void gru_forward(const CellForwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const int64_t G = kGruGates * H;
  const bool reset_after = a.shape.reset_after;
  const T *x = a.x, *h0 = a.h0, *w_ih = a.w.w_ih, *w_hh = a.w.w_hh;
  const int64_t* batch_sizes = a.batch_sizes;
  T *y = a.y, *h_n = a.h_n;
  const GruSaved<T> saved = gru_saved(a.workspace, steps, B, H);
  const auto& kernels = pointwise<T>();
  const CellOptions& options = a.shape.options;
  const RecurrentNoise& noise = options.noise;  // (needs options.enabled; dropout reset_after)
  const int64_t nr = step_gemm_kernels<T>().panel_width;
  const int64_t w_hh_bytes = G * H * int64_t(sizeof(T));  // (StepSplit)
  const InPlaceWeights in_place = in_place_weights<T>(steps, B, G, I, H);
  const bool training = saved.gates != nullptr;
  const GruForwardScratch<T> scratch = gru_forward_scratch(a.scratch, a.shape, training);
  if (noise.dropout()) {  // the mask of the whole sequence; the GEMM of step 0 reads h0 dropped
    recurrent_dropout_scale(noise, B, H, scratch.drop_scale);
    drop_recurrent(scratch.h_dropped + B * H, h0, scratch.drop_scale, 1, B, H);
  }
  T *bias_ih = scratch.bias_ih, *bias_hh = scratch.bias_hh, *hproj = scratch.hproj;
  copy_or_zero(bias_ih, a.w.b_ih, G);
  copy_or_zero(bias_hh, a.w.b_hh, G);
  T* hproj_n = hproj + B * 2 * H;  // reset_before: W_hn (r*h)
  const int64_t chunk = training ? steps : projection_chunk_steps(steps, B);

  // Training: every step's input projection in one GEMM, straight into the saved gates.
  if (training)
    project_inputs(saved.gates, G, scratch.packed_ih, x, w_ih, steps * B, I, kGruGates, H, false,
                   nullptr, in_place.ih);

  // The time loop on a team, split by units or rows as in lstm_forward. By units, the Cho
  // variant needs all of r*h before its second GEMM: a second barrier.
  run_team(recurrent_team_size(H, B * G * H, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, w_hh_bytes, !batch_sizes, in_place.hh);
    const auto [w_hh_t, w_ih_t] =
        pack_gate_loop_weights(split.packs, kGruGates, H, scratch.packed_hh, w_hh, H,
                               scratch.packed_ih, w_ih, I, training, a.w.half, in_place);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const int64_t at = r0 * H + j0;  // this member's first (row, unit) in [B,H] buffers
    for (int64_t t = 0; t < steps; ++t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* gates = training ? saved.gates + t * B * G : scratch.proj + (t % chunk) * B * G;
      if (!training && t % chunk == 0) {
        const int64_t n_steps = std::min(chunk, steps - t);
        project_chunk(split, w_ih_t, kGruGates, n_steps * B, x + t * B * I, I, scratch.proj, G);
      }
      const T* h_prev = t ? y + (t - 1) * B * H : h0;
      T* extra = training ? saved.extra + t * B * H : scratch.extra_step;  // hn or r*h
      T* h = y + t * B * H;
      T* my_gates = gates + r0 * G + j0;
      if (reset_after) {
        const T* h_gemm = noise.dropout() ? scratch.h_dropped + (t + 1) % 2 * B * H : h_prev;
        step_gemm(w_hh_t, 0, kGruGates, split.units, rows, h_gemm + r0 * H, H, hproj + r0 * G, G,
                  false);
        if (options.enabled)
          kernels.gru_forward_options(options, rows, H, w, bias_ih + j0, bias_hh + j0, my_gates,
                                      hproj + r0 * G + j0, h_prev + at, extra + at, h + at);
        else
          kernels.gru_forward(rows, H, w, bias_ih + j0, bias_hh + j0, my_gates, hproj + r0 * G + j0,
                              h_prev + at, extra + at, h + at);
      } else {
        step_gemm(w_hh_t, 0, 2, split.units, rows, h_prev + r0 * H, H, hproj + r0 * 2 * H, 2 * H,
                  false);
        if (options.enabled)
          kernels.gru_rb_forward_gates_options(options, rows, H, w, bias_ih + j0, bias_hh + j0,
                                               my_gates, hproj + r0 * 2 * H + j0, h_prev + at,
                                               extra + at);
        else
          kernels.gru_rb_forward_gates(rows, H, w, bias_ih + j0, bias_hh + j0, my_gates,
                                       hproj + r0 * 2 * H + j0, h_prev + at, extra + at);
        split.share_step_results();  // W_hn (r*h) reads every unit of r*h
        step_gemm(w_hh_t, 2, 1, split.units, rows, extra + r0 * H, H, hproj_n + r0 * H, H, false);
        if (options.enabled)
          kernels.gru_rb_forward_state_options(options, rows, H, w, bias_ih + j0, bias_hh + j0,
                                               my_gates, hproj_n + at, h_prev + at, h + at);
        else
          kernels.gru_rb_forward_state(rows, H, w, bias_ih + j0, bias_hh + j0, my_gates,
                                       hproj_n + at, h_prev + at, h + at);
      }
      if (options.enabled && noise.zoneout_h > 0)  // h = a*h_prev + (1-a)*h~
        zoneout_states(noise, NoiseMask::zoneout_h, noise.zoneout_h, t, r0, rows, j0, w, H,
                       h_prev ? h_prev + at : nullptr, h + at, h + at);
      if (options.enabled && noise.dropout())  // what the next step's GEMM reads
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t j = 0; j < w; ++j) {
            const int64_t k = at + b * H + j;
            scratch.h_dropped[t % 2 * B * H + k] = h[k] * scratch.drop_scale[k];
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

template void gru_forward<float>(const CellForwardArgs<float>&);
template void gru_forward<double>(const CellForwardArgs<double>&);

}  // namespace fusedrnn
