#include "ln_cell_driver.h"

namespace fusedrnn {

// The arguments and their shapes: ln_cell.h.
template <typename T>
void ln_gru_forward(const LnGruForwardArgs<T>& a) {
  const int64_t steps = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, G = 3 * H;
  const auto& ln = layer_norm_kernels<T>();
  // Per step, after the GEMM into hproj: its LN, r, z, n and h = (1-z)*n + z*h_prev.
  ln_forward_sequence(CellKind::gru, a.shape, a.w, a.x, a.h0, a.y, a.workspace, a.scratch, a.p.eps,
                      [&](const LnSaved<T>& parts, int64_t t, int64_t s, int64_t r0, int64_t rows) {
                        const T* h_prev = t ? a.y + (t - 1) * B * H : a.h0;
                        const int64_t at = s * B + r0;
                        ln.gru_forward(rows, H, a.p, parts.xhat_h + at * G, parts.rstd_h + at,
                                       parts.xhat_x + (t * B + r0) * G, parts.gates + at * G,
                                       h_prev + r0 * H, a.y + (t * B + r0) * H);
                      });
  copy_or_zero(a.h_n, steps ? a.y + (steps - 1) * B * H : a.h0, B * H);
}

template void ln_gru_forward<float>(const LnGruForwardArgs<float>&);
template void ln_gru_forward<double>(const LnGruForwardArgs<double>&);

}  // namespace fusedrnn
