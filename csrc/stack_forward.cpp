#include "common/sequence.h"
#include "common/stack_layout.h"
#include "stack.h"

namespace fusedrnn {

int64_t stack_saved_size(const StackShape& s) {
  int64_t total = 0;
  saved_layout<float>(nullptr, s, 0, &total);
  return total;
}

namespace {
// Scratch of a forward: per direction the cell's scratch; the reversed input of the reverse
// direction; in inference, the outputs of each direction and two layer-to-layer buffers.
template <typename T>
struct ForwardScratch {
  T* cell[2];
  T* reversed_input;
  T* output[2];
  T* between_layers[2];
  int64_t size;
};

template <typename T>
ForwardScratch<T> forward_scratch(T* base, const StackShape& s, bool training) {
  const int64_t TB = s.steps * s.batch;
  const int64_t widest_input = std::max(s.input, s.directions * s.out());
  ForwardScratch<T> f{};
  Carver<T> carve{base};
  CellShape widest = s;  // each direction's cell scratch serves every layer
  widest.input = widest_input;
  for (int64_t d = 0; d < s.directions; ++d)
    f.cell[d] = carve.take(cell_forward_scratch_size(s.cell, widest, training));
  f.reversed_input = carve.take(s.directions == 2 ? TB * widest_input : 0);
  for (int64_t d = 0; d < s.directions && !training; ++d) f.output[d] = carve.take(TB * s.out());
  for (int64_t i = 0; i < 2 && !training && s.layers > 1; ++i)
    f.between_layers[i] = carve.take(TB * s.directions * s.out());
  f.size = carve.used;
  return f;
}
}  // namespace

int64_t stack_forward_scratch_size(const StackShape& s, bool training) {
  return forward_scratch<float>(nullptr, s, training).size;
}

// The arguments and their shapes: stack.h (StackForwardArgs).
template <typename T>
void stack_forward(const StackForwardArgs<T>& a) {
  const StackShape& s = a.shape;
  const T *x = a.in.x, *h0 = a.in.h0, *c0 = a.in.c0;
  const int64_t *batch_sizes = a.in.batch_sizes, *lengths = a.in.lengths;
  T *y = a.y, *h_n = a.h_n, *c_n = a.c_n, *saved = a.saved;
  const bool training = saved != nullptr;
  const int64_t B = s.batch, H = s.hidden, R = s.out(), D = s.directions, TB = s.steps * B;
  const int64_t width = D * R;  // of every layer's output
  const ForwardScratch<T> f = forward_scratch(a.scratch, s, training);
  const bool lstm = s.cell == CellKind::lstm;

  for (int64_t l = 0; l < s.layers; ++l) {
    const SavedLayout<T> here = saved_layout(saved, s, l);
    const int64_t in_size = s.layer_input(l);
    const T* in = l == 0 ? x : training ? here.layer_input : f.between_layers[(l - 1) % 2];
    T* out = l == s.layers - 1 ? y
             : training        ? saved_layout(saved, s, l + 1).layer_input
                               : f.between_layers[l % 2];
    for_each_direction(s, [&](int64_t d) {
      const int64_t k = l * D + d;
      const bool reverse = d == 1;
      const T* x_d = in;
      if (reverse) {
        copy_processing_order<false>(f.reversed_input, in_size, in, in_size, in_size, lengths,
                                     s.steps, B, true);
        x_d = f.reversed_input;
      }
      CellForwardArgs<T> cell;
      cell.y = training ? here.output[d] : f.output[d];
      cell.h_n = h_n + k * B * R;
      cell.c_n = lstm ? c_n + k * B * H : nullptr;
      cell.x = x_d;
      cell.h0 = h0 + k * B * R;
      cell.c0 = lstm ? c0 + k * B * H : nullptr;
      cell.w = a.in.weights[k];
      cell.batch_sizes = batch_sizes;
      cell.workspace = training ? here.workspace[d] : nullptr;
      cell.scratch = f.cell[d];
      cell.shape = s.layer_cell(l, s.steps, d);
      cell_forward(s.cell, cell);
      copy_processing_order<false>(out + d * R, width, cell.y, R, R, lengths, s.steps, B, reverse);
    });
    if (a.in.dropout_masks && l < s.layers - 1) {
      const T* mask = a.in.dropout_masks + l * TB * width;
      for (int64_t i = 0; i < TB * width; ++i) out[i] *= mask[i];
    }
  }
}

template void stack_forward<float>(const StackForwardArgs<float>&);
template void stack_forward<double>(const StackForwardArgs<double>&);

}  // namespace fusedrnn
