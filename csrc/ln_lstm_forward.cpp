#include "ln_cell_driver.h"

namespace fusedrnn {

int64_t ln_cell_workspace_size(CellKind cell, int64_t T, int64_t B, int64_t H) {
  int64_t size = 0;
  ln_saved<float>(nullptr, cell, T, T, B, H, &size);
  return size;
}

int64_t ln_cell_forward_scratch_size(CellKind cell, const CellShape& s, bool training) {
  return ln_forward_scratch<float>(nullptr, cell, s, training).size;
}

int64_t ln_cell_backward_scratch_size(CellKind cell, const CellShape& s) {
  return ln_backward_scratch<float>(nullptr, cell, s).size;
}

// The arguments and their shapes: ln_cell.h.
template <typename T>
void ln_lstm_forward(const LnLstmForwardArgs<T>& a) {
  const CellKind cell = CellKind::lstm;
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const int64_t G = 4 * H;
  const bool training = a.workspace != nullptr;
  const LnForwardScratch<T> scratch = ln_forward_scratch(a.scratch, cell, a.shape, training);
  const LnSaved<T> saved =
      training ? ln_saved(a.workspace, cell, steps, steps, B, H) : scratch.inference;
  const auto& ln = layer_norm_kernels<T>();

  // Every step's input projection and its LN at once.
  ln_project_inputs(saved.xhat_x, saved.rstd_x, scratch.packed_ih, a.x, a.w.w_ih, steps * B, I,
                    int64_t(4), H, a.p.eps);
  // Per step, after the GEMM into hproj: its LN, the gates, c = f*c_prev + i*g, LN(c) and h.
  ln_forward_loop(cell, a.shape, a.w.w_hh, scratch.packed_hh, a.h0, a.y, saved.xhat_h, training,
                  [&](int64_t t, int64_t s, int64_t r0, int64_t rows) {
                    const T* c_prev = t ? saved.c + (training ? t - 1 : 0) * B * H : a.c0;
                    const int64_t at = s * B;  // this step's first row in the saved parts
                    ln.lstm_forward(rows, H, a.p, saved.xhat_h + (at + r0) * G,
                                    saved.rstd_h + at + r0, saved.xhat_x + (t * B + r0) * G,
                                    saved.gates + (at + r0) * G, c_prev + r0 * H,
                                    saved.c + (at + r0) * H, saved.chat + (at + r0) * H,
                                    saved.rstd_c + at + r0, a.y + (t * B + r0) * H);
                  });
  if (steps) {
    copy_or_zero(a.h_n, a.y + (steps - 1) * B * H, B * H);
    copy_or_zero(a.c_n, saved.c + (training ? steps - 1 : 0) * B * H, B * H);
  } else {
    copy_or_zero(a.h_n, a.h0, B * H);
    copy_or_zero(a.c_n, a.c0, B * H);
  }
}

template void ln_lstm_forward<float>(const LnLstmForwardArgs<float>&);
template void ln_lstm_forward<double>(const LnLstmForwardArgs<double>&);

}  // namespace fusedrnn
