#include "ln_cell_driver.h"

namespace fusedrnn {

// The arguments and their shapes: ln_cell.h.
template <typename T>
void ln_lstm_backward(const LnLstmBackwardArgs<T>& a) {
  const CellKind cell = CellKind::lstm;
  const int64_t steps = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, G = 4 * H;
  const LnSaved<const T> saved = ln_saved(a.workspace, cell, steps, steps, B, H);
  const LnBackwardScratch<T> scratch = ln_backward_scratch(a.scratch, cell, a.shape);
  const auto& ln = layer_norm_kernels<T>();

  // dh0 and dc0 carry the state gradients backwards in time and end as dL/dh0, dL/dc0.
  copy_or_zero(a.dh0, a.dh_n, B * H);
  copy_or_zero(a.dc0, a.dc_n, B * H);
  // forward: h = o * tanh(gamma_c * LN(c) + beta_c), c = f*c_prev + i*g, the gates from
  // pre = gamma_ih * xhat_x + gamma_hh * LN(W_hh h_prev) + bias: dpre, dhproj, du of step t;
  // then dh_prev = dhproj W_hh (the loop's GEMM).
  ln_backward_loop(cell, a.shape, a.w.w_hh, scratch.packed, scratch.dhproj, a.dh0, false,
                   [&](int64_t t, int64_t r0, int64_t rows) {
                     const int64_t at = t * B + r0;
                     const T* c_prev = t ? saved.c + (at - B) * H : a.c0 + r0 * H;
                     ln.lstm_backward(rows, H, a.p, scratch.d_ax + at * G, scratch.dhproj + at * G,
                                      scratch.du + at * H, a.dc0 + r0 * H, a.dh0 + r0 * H,
                                      a.dy ? a.dy + at * H : nullptr, saved.gates + at * G, c_prev,
                                      saved.chat + at * H, saved.rstd_c + at, saved.xhat_h + at * G,
                                      saved.rstd_h + at);
                   });
  // forward: u = gamma_c * chat + beta_c  ->  dgamma_c += sum du * chat, dbeta_c += sum du
  const int64_t TB = steps * B;
  ln_backward_over_steps(cell, a.shape, scratch, saved, a.p.gamma_ih, a.dx, a.g.dw_ih, a.g.dw_hh,
                         a.g.dgamma_ih, a.g.dbias, a.g.dgamma_hh, static_cast<T*>(nullptr), a.x,
                         a.w.w_ih, a.y, a.h0, [&](const Team& team) {
                           const int64_t j0 = team.begin(H), width = team.end(H) - j0;
                           if (width > 0)
                             ln.param_grads(TB, width, H, scratch.du + j0, saved.chat + j0, nullptr,
                                            nullptr, a.g.dgamma_c ? a.g.dgamma_c + j0 : nullptr,
                                            a.g.dbeta_c ? a.g.dbeta_c + j0 : nullptr);
                         });
}

template void ln_lstm_backward<float>(const LnLstmBackwardArgs<float>&);
template void ln_lstm_backward<double>(const LnLstmBackwardArgs<double>&);

}  // namespace fusedrnn
