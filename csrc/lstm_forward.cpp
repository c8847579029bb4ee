#include "common/carver.h"
#include "common/isa_table.h"
#include "common/sequence.h"
#include "common/threading.h"
#include "lstm.h"
#include "recurrent_noise.h"

namespace fusedrnn {

int64_t lstm_workspace_size(int64_t T, int64_t B, int64_t H, int64_t P, bool cell_zoneout) {
  int64_t size = 0;
  lstm_saved<float>(nullptr, T, B, H, P, &size, cell_zoneout);
  return size;
}

namespace {
// The scratch of a forward, in order (a null base only counts: lstm_forward_scratch_size).
template <typename T>
struct LstmForwardScratch {
  T* bias;       // [4H]: b_ih + b_hh
  T* packed_hh;  // W_hh^T in panels
  T* packed_ih;  // W_ih^T in panels
  T* packed_hr;  // W_hr^T in panels (projection only)
  T* m_step;     // [B,H]: m of one step (inference with a projection)
  T* proj;       // [chunk,B,4H]: the input projection of a chunk of steps (inference)
  // recurrent_noise.h (options only)
  T* c_cand;      // [B,H]: c~ of one step (inference with zoneout on c)
  T* drop_scale;  // [B,H]: the recurrent dropout's keep / (1 - p)
  T* h_dropped;   // [2,B,H]: h_{t-1} * drop_scale as the GEMM reads it, by step parity
  int64_t size;
};

template <typename T>
LstmForwardScratch<T> lstm_forward_scratch(T* base, const CellShape& s, bool training) {
  const int64_t B = s.batch, I = s.input, H = s.hidden, P = s.proj, R = s.out();
  const int64_t G = kLstmGates * H;
  Carver<T> carve{base};
  LstmForwardScratch<T> f{};
  f.bias = carve.take(G);
  f.packed_hh = carve.take(packed_weights_size(R, kLstmGates, H));
  f.packed_ih = carve.take(packed_weights_size(I, kLstmGates, H));
  f.packed_hr = carve.take(P ? packed_weights_size(H, 1, P) : 0);
  f.m_step = carve.take(P && !training ? B * H : 0);
  f.proj = carve.take(training ? 0 : projection_chunk_steps(s.steps, B) * B * G);
  const RecurrentNoise& noise = s.options.noise;
  f.c_cand = carve.take(!training && noise.zoneout_c > 0 ? B * H : 0);
  f.drop_scale = carve.take(noise.dropout() ? B * H : 0);
  f.h_dropped = carve.take(noise.dropout() ? 2 * B * H : 0);
  f.size = carve.used;
  return f;
}
}  // namespace

int64_t lstm_forward_scratch_size(const CellShape& s, bool training) {
  return lstm_forward_scratch<float>(nullptr, s, training).size;
}

// The arguments and their shapes: recurrent_cell.h (CellForwardArgs), lstm.h.
template <typename T>
void lstm_forward(const CellForwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const int64_t P = a.shape.proj, G = kLstmGates * H, R = a.shape.out();
  const T *x = a.x, *h0 = a.h0, *c0 = a.c0, *w_ih = a.w.w_ih, *w_hh = a.w.w_hh, *w_hr = a.w.w_hr;
  const int64_t* batch_sizes = a.batch_sizes;
  T *y = a.y, *h_n = a.h_n, *c_n = a.c_n;
  const CellOptions& options = a.shape.options;
  const RecurrentNoise& noise = options.noise;  // (needs options.enabled)
  const LstmSaved<T> saved = lstm_saved(a.workspace, steps, B, H, P, nullptr, noise.zoneout_c > 0);
  const auto& kernels = pointwise<T>();
  const int64_t nr = step_gemm_kernels<T>().panel_width;
  const int64_t w_hh_bytes = G * R * int64_t(sizeof(T));  // (StepSplit)
  const InPlaceWeights in_place = in_place_weights<T>(steps, B, G, I, R);
  const bool training = saved.gates != nullptr;
  const LstmForwardScratch<T> scratch = lstm_forward_scratch(a.scratch, a.shape, training);
  sum_biases(scratch.bias, a.w.b_ih, a.w.b_hh, G);
  const int64_t chunk = training ? steps : projection_chunk_steps(steps, B);

  if (!training) copy_or_zero(c_n, c0, B * H);  // inference updates c in place in c_n
  if (noise.dropout()) {  // the mask of the whole sequence; the GEMM of step 0 reads h0 dropped
    recurrent_dropout_scale(noise, B, H, scratch.drop_scale);
    drop_recurrent(scratch.h_dropped + B * H, h0, scratch.drop_scale, 1, B, H);
  }

  // Training: every step's input projection in one GEMM, straight into the saved gates.
  if (training)
    project_inputs(saved.gates, G, scratch.packed_ih, x, w_ih, steps * B, I, kLstmGates, H, false,
                   nullptr, in_place.ih);

  // The time loop on a team (StepSplit): by units, each member owns the hidden units
  // [j0, j0 + w) of every gate that its panels of W_hh^T hold (and the outputs of a projection its
  // panels of W_hr^T hold), does their share of each GEMM and of the fused pass, and a barrier
  // per step publishes h_t to all; by rows, each member runs its rows through every unit.
  run_team(recurrent_team_size(H, B * G * R, ceil_div(H, nr)), [&](int member, int members) {
    const StepSplit split =
        step_split(member, members, B, H, nr, w_hh_bytes, !batch_sizes && !P, in_place.hh);
    const auto [w_hh_t, w_ih_t] =
        pack_gate_loop_weights(split.packs, kLstmGates, H, scratch.packed_hh, w_hh, R,
                               scratch.packed_ih, w_ih, I, training, a.w.half, in_place);
    split.wait_for_all_panels();
    const int64_t j0 = split.units.begin, w = split.units.width, r0 = split.first_row();
    const T* peephole = a.w.peephole ? a.w.peephole + j0 : nullptr;
    // With a projection: this member's outputs of h = m W_hr^T, whole panels of W_hr^T.
    const PanelShare outputs = panel_share(P, nr, member, members);
    const StepWeights<T> w_hr_t =
        P ? step_weights(a.w.half, a.w.half ? a.w.half->w_hr : nullptr, scratch.packed_hr, w_hr, H,
                         1, P, outputs, InPlace::no, a.w.half ? a.w.half->w_hr_amx : nullptr)
          : StepWeights<T>{};
    for (int64_t t = 0; t < steps; ++t) {
      if (stop_requested()) break;  // (every member: the barriers no longer wait)
      const int64_t n = active_rows(batch_sizes, t, B), rows = split.row_count(n);
      T* gates = training ? saved.gates + t * B * G : scratch.proj + (t % chunk) * B * G;
      if (!training && t % chunk == 0) {  // this member's columns of the next chunk's projection
        const int64_t n_steps = std::min(chunk, steps - t);
        project_chunk(split, w_ih_t, kLstmGates, n_steps * B, x + t * B * I, I, scratch.proj, G);
      }
      const T* h_prev = t ? y + (t - 1) * B * R : h0;
      const T* c_prev = training ? (t ? saved.c + (t - 1) * B * H : c0) : c_n;
      T* c = training ? saved.c + t * B * H : c_n;
      T* m = P ? (training ? saved.m + t * B * H : scratch.m_step) : nullptr;
      T* h = y + t * B * R;
      // gates += h_prev W_hh^T; then bias, nonlinearities and c = f*c_prev + i*g, h = o*tanh(c)
      const T* h_gemm = noise.dropout() ? scratch.h_dropped + (t + 1) % 2 * B * H : h_prev;
      step_gemm(w_hh_t, 0, kLstmGates, split.units, rows, h_gemm + r0 * R, R, gates + r0 * G, G,
                true);
      T* h_out = (P ? m + r0 * H : h + r0 * R) + j0;
      if (options.enabled) {             // ONNX's options: the gates keep their pre-activations
        const int64_t at = r0 * H + j0;  // (no projection with zoneout or dropout: R = H)
        T* c_cand =
            noise.zoneout_c > 0 ? (training ? saved.c_cand + t * B * H : scratch.c_cand) : c;
        kernels.lstm_forward_options(options, rows, H, w, scratch.bias + j0, peephole,
                                     gates + r0 * G + j0, c_prev + r0 * H + j0, c_cand + at, h_out);
        if (noise.zoneout()) {  // c = a_c*c_prev + (1-a_c)*c~, h = a_h*h_prev + (1-a_h)*h~
          if (noise.zoneout_c > 0)
            zoneout_states(noise, NoiseMask::zoneout_c, noise.zoneout_c, t, r0, rows, j0, w, H,
                           c_prev ? c_prev + at : nullptr, c_cand + at, c + at);
          zoneout_states(noise, NoiseMask::zoneout_h, noise.zoneout_h, t, r0, rows, j0, w, H,
                         h_prev ? h_prev + at : nullptr, h_out, h_out);
        }
        if (noise.dropout())  // what the next step's GEMM reads
          for (int64_t b = 0; b < rows; ++b)
            for (int64_t j = 0; j < w; ++j) {
              const int64_t k = at + b * H + j;
              scratch.h_dropped[t % 2 * B * H + k] = h[k] * scratch.drop_scale[k];
            }
      } else
        kernels.lstm_forward(rows, H, w, scratch.bias + j0, gates + r0 * G + j0,
                             c_prev + r0 * H + j0, c + r0 * H + j0, h_out);
      if (P) {  // h = m W_hr^T needs every unit of m
        team_barrier();
        step_gemm(w_hr_t, 0, 1, outputs, n, m, H, h, P, false);
      }
      if (member == 0) {  // rows past their length: zero outputs and saved entries
        zero_rows(h, n, B, R);
        if (training) {
          zero_rows(gates, n, B, G);
          zero_rows(c, n, B, H);
          if (P) zero_rows(m, n, B, H);
          if (saved.c_cand) zero_rows(saved.c_cand + t * B * H, n, B, H);
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

template void lstm_forward<float>(const CellForwardArgs<float>&);
template void lstm_forward<double>(const CellForwardArgs<double>&);

}  // namespace fusedrnn
