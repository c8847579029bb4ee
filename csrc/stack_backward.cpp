#include "common/sequence.h"
#include "common/stack_layout.h"
#include "lstm.h"
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
  T *dh_end, *dc_end, *dh_start, *dc_start;  // truncation: state gradients at a span's two ends
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
    b.cell[d] = carve.take(cell_backward_scratch_size(s.cell, s));
    b.dy[d] = carve.take(TB * R);
    b.dx[d] = carve.take(TB * widest_input);
  }
  b.reversed_input = carve.take(D == 2 ? TB * widest_input : 0);
  b.dh_end = carve.take(s.batch * R);
  b.dc_end = carve.take(s.batch * s.hidden);
  b.dh_start = carve.take(s.batch * R);
  b.dc_start = carve.take(s.batch * s.hidden);
  b.size = carve.used;
  return b;
}
}  // namespace

int64_t stack_backward_scratch_size(const StackShape& s) {
  return backward_scratch<float>(nullptr, s).size;
}

namespace {

// dst[b] = src[b] for the rows whose last step lies in [begin, end), zero for the others.
template <typename T>
void rows_ending_in(T* dst, const T* src, int64_t width, const int64_t* lengths, int64_t steps,
                    int64_t B, int64_t begin, int64_t end) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t last = (lengths ? lengths[b] : steps) - 1;
    const bool here = src && begin <= last && last < end;
    for (int64_t k = 0; k < width; ++k) dst[b * width + k] = here ? src[b * width + k] : T(0);
  }
}

// The lowest layer whose backward runs: 0 when dx or the initial states' gradients are wanted,
// else the lowest layer with a parameter gradient wanted (the layers below it give nothing that
// anyone wants); the layer count when nothing is wanted at all.
template <typename T>
int64_t lowest_layer_wanted(const StackBackwardArgs<T>& a) {
  if (a.dx || a.state_grads) return 0;
  const int64_t D = a.shape.directions;
  for (int64_t k = 0; k < a.shape.layers * D; ++k)
    if (a.grads[k].any_wanted()) return k / D;
  return a.shape.layers;
}

// Whether layer l's backward computes the gradient of its input: wanted by a layer below, or as
// dx (layer `lowest`, the lowest that runs, computes none unless it is layer 0 and dx is wanted).
template <typename T>
bool input_gradient_wanted(const StackBackwardArgs<T>& a, int64_t l, int64_t lowest) {
  return l > lowest || a.dx;
}

// What the backward of layer l, direction d's cell takes from the stack's arrays: its weights,
// gradients, workspace and scratch, and its input gradient's buffer (the other arguments depend
// on the span of steps it runs).
template <typename T>
CellBackwardArgs<T> layer_backward_args(const StackBackwardArgs<T>& a, int64_t l, int64_t d,
                                        int64_t lowest, const SavedLayout<const T>& here,
                                        const BackwardScratch<T>& b) {
  const int64_t k = l * a.shape.directions + d;
  CellBackwardArgs<T> cell;
  cell.dx = input_gradient_wanted(a, l, lowest) ? b.dx[d] : nullptr;
  cell.g = a.grads[k];
  cell.w = a.in.weights[k];
  cell.workspace = here.workspace[d];
  cell.saved_steps = a.shape.steps;
  cell.scratch = b.cell[d];
  return cell;
}

template <typename T>
void add_into(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// TBPTT(k1 = a.stride, k2 = a.truncate) over a one-direction stack; see stack.h.
template <typename T>
void truncated_backward(const StackBackwardArgs<T>& a, const BackwardScratch<T>& b) {
  const StackShape& s = a.shape;
  const int64_t k1 = a.stride, k2 = a.truncate;
  const int64_t B = s.batch, H = s.hidden, R = s.out(), T_ = s.steps, TB = T_ * B;
  const bool lstm = s.cell == CellKind::lstm;
  if (a.dx) copy_or_zero<T>(a.dx, nullptr, TB * s.input);
  copy_or_zero<T>(a.dh0, nullptr, s.layers * B * R);
  if (lstm) copy_or_zero<T>(a.dc0, nullptr, s.layers * B * H);
  const int64_t lowest = lowest_layer_wanted(a);
  for (int64_t chunk_begin = (T_ - 1) / k1 * k1; chunk_begin >= 0; chunk_begin -= k1) {
    const int64_t end = std::min(chunk_begin + k1, T_);
    const int64_t begin = std::max<int64_t>(0, chunk_begin - (k2 - k1));  // the span
    const int64_t n = end - begin;
    // The gradient of this chunk's outputs; the look-back steps before the chunk have none.
    copy_or_zero(b.d_output, a.dy ? a.dy + begin * B * R : nullptr, n * B * R);
    zero_rows(b.d_output, 0, (chunk_begin - begin) * B, R);
    for (int64_t l = s.layers - 1; l >= lowest; --l) {
      const SavedLayout<const T> here = saved_layout(a.saved, s, l);
      const int64_t in_size = s.layer_input(l);
      const T* in = l == 0 ? a.in.x : here.layer_input;
      // The states entering the span are constants: the forward's own states at begin - 1.
      const T* h_in = begin ? here.output[0] + (begin - 1) * B * R : a.in.h0 + l * B * R;
      const T* c_in = !lstm ? nullptr
                      : begin
                          ? lstm_saved(here.workspace[0], T_, B, H, s.proj).c + (begin - 1) * B * H
                          : a.in.c0 + l * B * H;
      rows_ending_in(b.dh_end, a.dh_n ? a.dh_n + l * B * R : nullptr, R, a.in.lengths, T_, B,
                     chunk_begin, end);
      if (lstm)
        rows_ending_in(b.dc_end, a.dc_n ? a.dc_n + l * B * H : nullptr, H, a.in.lengths, T_, B,
                       chunk_begin, end);
      CellBackwardArgs<T> cell = layer_backward_args(a, l, 0, lowest, here, b);
      cell.dh0 = b.dh_start;  // the state gradients at the span's two ends
      cell.dc0 = lstm ? b.dc_start : nullptr;
      cell.dy = b.d_output;
      cell.dh_n = b.dh_end;
      cell.dc_n = lstm ? b.dc_end : nullptr;
      cell.x = in + begin * B * in_size;
      cell.h0 = h_in;
      cell.c0 = c_in;
      cell.y = here.output[0] + begin * B * R;
      cell.batch_sizes = a.in.batch_sizes ? a.in.batch_sizes + begin : nullptr;
      cell.first_step = begin;
      cell.shape = s.layer_cell(l, n);
      cell_backward(s.cell, cell);
      if (begin == 0) {
        add_into(a.dh0 + l * B * R, b.dh_start, B * R);
        if (lstm) add_into(a.dc0 + l * B * H, b.dc_start, B * H);
      }
      if (l > lowest) {
        // forward: input of layer l = output of layer l-1 times its dropout mask
        const T* mask =
            a.in.dropout_masks ? a.in.dropout_masks + (l - 1) * TB * R + begin * B * R : nullptr;
        for (int64_t i = 0; i < n * B * R; ++i)
          b.d_output[i] = mask ? b.dx[0][i] * mask[i] : b.dx[0][i];
      } else if (a.dx) {
        add_into(a.dx + begin * B * s.input, b.dx[0], n * B * s.input);
      }
    }
  }
}

}  // namespace

// The arguments and their shapes: stack.h (StackBackwardArgs).
template <typename T>
void stack_backward(const StackBackwardArgs<T>& a) {
  const StackShape& s = a.shape;
  const int64_t B = s.batch, H = s.hidden, R = s.out(), D = s.directions, TB = s.steps * B;
  const int64_t width = D * R;
  const BackwardScratch<T> b = backward_scratch(a.scratch, s);
  const bool lstm = s.cell == CellKind::lstm;
  if (a.truncate > 0) {
    truncated_backward(a, b);
    return;
  }

  copy_or_zero(b.d_output, a.dy, TB * width);
  const int64_t lowest = lowest_layer_wanted(a);
  for (int64_t l = s.layers - 1; l >= lowest; --l) {
    const SavedLayout<const T> here = saved_layout(a.saved, s, l);
    const int64_t in_size = s.layer_input(l);
    const T* in = l == 0 ? a.in.x : here.layer_input;
    T* d_in = l == 0 ? a.dx : b.d_input;  // dL/d(input of layer l), summed over directions
    for_each_direction(s, [&](int64_t d) {
      const int64_t k = l * D + d;
      const bool reverse = d == 1;
      copy_processing_order<false>(b.dy[d], R, b.d_output + d * R, width, R, a.in.lengths, s.steps,
                                   B, reverse);
      const T* x_d = in;
      if (reverse) {
        copy_processing_order<false>(b.reversed_input, in_size, in, in_size, in_size, a.in.lengths,
                                     s.steps, B, true);
        x_d = b.reversed_input;
      }
      CellBackwardArgs<T> cell = layer_backward_args(a, l, d, lowest, here, b);
      cell.dh0 = a.dh0 + k * B * R;
      cell.dc0 = lstm ? a.dc0 + k * B * H : nullptr;
      cell.dy = b.dy[d];
      cell.dh_n = a.dh_n ? a.dh_n + k * B * R : nullptr;
      cell.dc_n = lstm && a.dc_n ? a.dc_n + k * B * H : nullptr;
      cell.x = x_d;
      cell.h0 = a.in.h0 + k * B * R;
      cell.c0 = lstm ? a.in.c0 + k * B * H : nullptr;
      cell.y = here.output[d];
      cell.batch_sizes = a.in.batch_sizes;
      cell.shape = s.layer_cell(l, s.steps, d);
      cell_backward(s.cell, cell);
    });
    if (!input_gradient_wanted(a, l, lowest)) break;
    // Both directions read the same input: their gradients add up.
    copy_processing_order<false>(d_in, in_size, b.dx[0], in_size, in_size, a.in.lengths, s.steps, B,
                                 false);
    if (D == 2)
      copy_processing_order<true>(d_in, in_size, b.dx[1], in_size, in_size, a.in.lengths, s.steps,
                                  B, true);
    if (l > 0) {
      // forward: input of layer l = output of layer l-1 times its dropout mask
      const T* mask = a.in.dropout_masks ? a.in.dropout_masks + (l - 1) * TB * width : nullptr;
      for (int64_t i = 0; i < TB * width; ++i) b.d_output[i] = mask ? d_in[i] * mask[i] : d_in[i];
    }
  }
}

template void stack_backward<float>(const StackBackwardArgs<float>&);
template void stack_backward<double>(const StackBackwardArgs<double>&);

}  // namespace fusedrnn
