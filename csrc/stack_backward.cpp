#include "common/sequence.h"
#include "common/stack_layout.h"
#include "stack.h"

namespace fusedrnn {

namespace {
// Scratch of a backward: the gradient of the current layer's output and of its input; per
// direction the cell's scratch, its output gradient and input gradient in processing order; the
// reversed input of the reverse direction.
template <typename T>
struct BackwardScratch {
  T* d_output;
  T* d_input;
  T* cell[2];
  T* dy[2];
  T* dx[2];
  T* reversed_input;
  int64_t size;
};

template <typename T>
BackwardScratch<T> backward_scratch(T* base, const StackShape& s) {
  const int64_t TB = s.steps * s.batch, R = s.out(), D = s.directions;
  const int64_t widest_input = std::max(s.input, D * R);
  BackwardScratch<T> b{};
  Carver<T> carve{base};
  b.d_output = carve.take(TB * D * R);
  b.d_input = carve.take(s.layers > 1 ? TB * D * R : 0);
  for (int64_t d = 0; d < D; ++d) {
    b.cell[d] = carve.take(cell_backward_scratch_size(s));
    b.dy[d] = carve.take(TB * R);
    b.dx[d] = carve.take(TB * widest_input);
  }
  b.reversed_input = carve.take(D == 2 ? TB * widest_input : 0);
  b.size = carve.used;
  return b;
}
}  // namespace

int64_t stack_backward_scratch_size(const StackShape& s) {
  return backward_scratch<float>(nullptr, s).size;
}

template <typename T>
void stack_backward(T* dx, T* dh0, T* dc0, const LayerGrads<T>* grads, T* scratch, const T* dy,
                    const T* dh_n, const T* dc_n, const T* x, const T* h0, const T* c0,
                    const LayerWeights<T>* weights, const T* y, const T* saved,
                    const T* dropout_masks, const int64_t* batch_sizes, const int64_t* lengths,
                    const StackShape& s) {
  (void)y;  // each direction's own output is in `saved`, in processing order
  const int64_t B = s.batch, H = s.hidden, R = s.out(), D = s.directions, TB = s.steps * B;
  const int64_t width = D * R;
  const BackwardScratch<T> b = backward_scratch(scratch, s);
  const bool lstm = s.cell == CellKind::lstm;

  copy_or_zero(b.d_output, dy, TB * width);
  for (int64_t l = s.layers - 1; l >= 0; --l) {
    const SavedLayout<const T> here = saved_layout(saved, s, l);
    const int64_t in_size = s.layer_input(l);
    const T* in = l == 0 ? x : here.layer_input;
    T* d_in = l == 0 ? dx : b.d_input;  // dL/d(input of layer l), summed over directions
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const bool reverse = d == 1;
      copy_processing_order<false>(b.dy[d], R, b.d_output + d * R, width, R, lengths, s.steps, B,
                                   reverse);
      const T* x_d = in;
      if (reverse) {
        copy_processing_order<false>(b.reversed_input, in_size, in, in_size, in_size, lengths,
                                     s.steps, B, true);
        x_d = b.reversed_input;
      }
      cell_backward(s, in_size, b.dx[d], dh0 + k * B * R, lstm ? dc0 + k * B * H : nullptr,
                    grads[k], b.cell[d], b.dy[d], dh_n ? dh_n + k * B * R : nullptr,
                    lstm && dc_n ? dc_n + k * B * H : nullptr, x_d, h0 + k * B * R,
                    lstm ? c0 + k * B * H : nullptr, weights[k], here.output[d],
                    here.workspace[d], batch_sizes);
    }
    // Both directions read the same input: their gradients add up.
    copy_processing_order<false>(d_in, in_size, b.dx[0], in_size, in_size, lengths, s.steps, B,
                                 false);
    if (D == 2)
      copy_processing_order<true>(d_in, in_size, b.dx[1], in_size, in_size, lengths, s.steps, B,
                                  true);
    if (l > 0) {
      // forward: input of layer l = output of layer l-1 times its dropout mask
      const T* mask = dropout_masks ? dropout_masks + (l - 1) * TB * width : nullptr;
      for (int64_t i = 0; i < TB * width; ++i)
        b.d_output[i] = mask ? d_in[i] * mask[i] : d_in[i];
    }
  }
}

#define FUSEDRNN_STACK_BACKWARD(T)                                                              \
  template void stack_backward<T>(T*, T*, T*, const LayerGrads<T>*, T*, const T*, const T*,     \
                                  const T*, const T*, const T*, const T*,                       \
                                  const LayerWeights<T>*, const T*, const T*, const T*,         \
                                  const int64_t*, const int64_t*, const StackShape&);
FUSEDRNN_STACK_BACKWARD(float)
FUSEDRNN_STACK_BACKWARD(double)

}  // namespace fusedrnn
