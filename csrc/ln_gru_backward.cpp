#include "ln_cell_driver.h"

namespace fusedrnn {

// The arguments and their shapes: ln_cell.h.
template <typename T>
void ln_gru_backward(const LnGruBackwardArgs<T>& a) {
  const CellKind cell = CellKind::gru;
  const int64_t steps = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, G = 3 * H;
  const LnSaved<const T> saved = ln_saved(a.workspace, cell, steps, steps, B, H);
  const LnBackwardScratch<T> scratch = ln_backward_scratch(a.scratch, cell, a.shape);
  const auto& ln = layer_norm_kernels<T>();

  // dh0 carries the state gradient backwards in time and ends as dL/dh0.
  copy_or_zero(a.dh0, a.dh_n, B * H);
  // forward: h = (1-z)*n + z*h_prev and the gates from a = gamma_ih * xhat_x + b_ih,
  // b = gamma_hh * LN(W_hh h_prev) + b_hh: d_ax, d_ah, dhproj of step t and dh = dh_total * z;
  // then dh_prev += dhproj W_hh (the loop's GEMM).
  ln_backward_loop(cell, a.shape, a.w.w_hh, scratch.packed, scratch.dhproj, a.dh0, true,
                   [&](int64_t t, int64_t r0, int64_t rows) {
                     const int64_t at = t * B + r0;
                     const T* h_prev = t ? a.y + (at - B) * H : a.h0 + r0 * H;
                     ln.gru_backward(rows, H, a.p, scratch.d_ax + at * G, scratch.d_ah + at * G,
                                     scratch.dhproj + at * G, a.dh0 + r0 * H,
                                     a.dy ? a.dy + at * H : nullptr, saved.gates + at * G,
                                     saved.xhat_h + at * G, saved.rstd_h + at, h_prev);
                   });
  ln_backward_over_steps(cell, a.shape, scratch, saved, a.p.gamma_ih, a.dx, a.g.dw_ih, a.g.dw_hh,
                         a.g.dgamma_ih, a.g.db_ih, a.g.dgamma_hh, a.g.db_hh, a.x, a.w.w_ih, a.y,
                         a.h0, [](const Team&) {});
}

template void ln_gru_backward<float>(const LnGruBackwardArgs<float>&);
template void ln_gru_backward<double>(const LnGruBackwardArgs<double>&);

}  // namespace fusedrnn
