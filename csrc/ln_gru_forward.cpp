#include "ln_cell_driver.h"

namespace fusedrnn {

// The arguments and their shapes: ln_cell.h.
template <typename T>
void ln_gru_forward(const LnGruForwardArgs<T>& a) {
  const CellKind cell = CellKind::gru;
  const int64_t steps = a.shape.steps, B = a.shape.batch, I = a.shape.input, H = a.shape.hidden;
  const int64_t G = 3 * H;
  const bool training = a.workspace != nullptr;
  const LnForwardScratch<T> scratch = ln_forward_scratch(a.scratch, cell, a.shape, training);
  const LnSaved<T> saved =
      training ? ln_saved(a.workspace, cell, steps, steps, B, H) : scratch.inference;
  const auto& ln = layer_norm_kernels<T>();

  ln_project_inputs(saved.xhat_x, saved.rstd_x, scratch.packed_ih, a.x, a.w.w_ih, steps * B, I,
                    int64_t(3), H, a.p.eps);
  // Per step, after the GEMM into hproj: its LN, r, z, n and h = (1-z)*n + z*h_prev.
  ln_forward_loop(cell, a.shape, a.w.w_hh, scratch.packed_hh, a.h0, a.y, saved.xhat_h, training,
                  [&](int64_t t, int64_t s, int64_t r0, int64_t rows) {
                    const T* h_prev = t ? a.y + (t - 1) * B * H : a.h0;
                    const int64_t at = s * B + r0;
                    ln.gru_forward(rows, H, a.p, saved.xhat_h + at * G, saved.rstd_h + at,
                                   saved.xhat_x + (t * B + r0) * G, saved.gates + at * G,
                                   h_prev + r0 * H, a.y + (t * B + r0) * H);
                  });
  copy_or_zero(a.h_n, steps ? a.y + (steps - 1) * B * H : a.h0, B * H);
}

template void ln_gru_forward<float>(const LnGruForwardArgs<float>&);
template void ln_gru_forward<double>(const LnGruForwardArgs<double>&);

}  // namespace fusedrnn
