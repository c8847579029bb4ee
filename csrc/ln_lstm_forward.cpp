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
  const int64_t steps = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, G = 4 * H;
  const bool training = a.workspace != nullptr;
  const auto& ln = layer_norm_kernels<T>();
  // Per step, after the GEMM into hproj: its LN, the gates, c = f*c_prev + i*g, LN(c) and h.
  const LnSaved<T> saved = ln_forward_sequence(
      CellKind::lstm, a.shape, a.w, a.x, a.h0, a.y, a.workspace, a.scratch, a.p.eps,
      [&](const LnSaved<T>& parts, int64_t t, int64_t s, int64_t r0, int64_t rows) {
        const T* c_prev = t ? parts.c + (training ? t - 1 : 0) * B * H : a.c0;
        const int64_t at = s * B;  // this step's first row in the per-step parts
        ln.lstm_forward(rows, H, a.p, parts.xhat_h + (at + r0) * G, parts.rstd_h + at + r0,
                        parts.xhat_x + (t * B + r0) * G, parts.gates + (at + r0) * G,
                        c_prev + r0 * H, parts.c + (at + r0) * H, parts.chat + (at + r0) * H,
                        parts.rstd_c + at + r0, a.y + (t * B + r0) * H);
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
