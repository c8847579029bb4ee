// Where each buffer of a layer stack lives inside the caller's `saved` and `scratch` arrays.
// One planner serves the size queries and the kernels, so they cannot disagree.
#pragma once
#include <algorithm>
#include <cstdint>

#include "gru.h"
#include "lstm.h"
#include "rnn.h"
#include "common/threading.h"
#include "stack.h"

namespace fusedrnn {

// The single-layer cell behind a stack, through one interface.
inline int64_t cell_workspace_size(const StackShape& s) {
  const int64_t T = s.steps, B = s.batch, H = s.hidden;
  switch (s.cell) {
    case CellKind::lstm: return lstm_workspace_size(T, B, H, s.proj);
    case CellKind::gru: return gru_workspace_size(T, B, H);
    default: return 0;
  }
}
inline int64_t cell_forward_scratch_size(const StackShape& s, bool training) {
  const int64_t T = s.steps, B = s.batch, H = s.hidden;
  const int64_t I = std::max(s.input, s.layer_input(1));  // the widest input of any layer
  switch (s.cell) {
    case CellKind::lstm: return lstm_forward_scratch_size(T, B, I, H, s.proj, training);
    case CellKind::gru: return gru_forward_scratch_size(T, B, I, H, training);
    default: return rnn_forward_scratch_size(I, H);
  }
}
inline int64_t cell_backward_scratch_size(const StackShape& s) {
  const int64_t T = s.steps, B = s.batch, H = s.hidden;
  switch (s.cell) {
    case CellKind::lstm: return lstm_backward_scratch_size(T, B, H, s.proj);
    case CellKind::gru: return gru_backward_scratch_size(T, B, H, s.reset_after);
    default: return rnn_backward_scratch_size(T, B, H);
  }
}

// Hands out consecutive pieces of one buffer; with a null base it only counts (size queries).
template <typename T>
struct Carver {
  T* base;
  int64_t used = 0;
  T* take(int64_t n) {
    T* p = base ? base + used : nullptr;
    used += n;
    return p;
  }
};

// The pieces of `saved` for layer l, direction d: the cell's workspace and its output [T,B,R] in
// processing order (time reversed per row for d = 1); and the input [T,B,D*R] of every layer l>0.
template <typename T>
struct SavedLayout {
  T* workspace[2];
  T* output[2];
  T* layer_input;  // null for layer 0 (the input is x)
};

template <typename T>
SavedLayout<T> saved_layout(T* saved, const StackShape& s, int64_t layer, int64_t* total = nullptr) {
  const int64_t TB = s.steps * s.batch, per_layer_direction = cell_workspace_size(s) + TB * s.out();
  const int64_t first_inputs = s.layers * s.directions * per_layer_direction;
  SavedLayout<T> out{};
  Carver<T> carve{saved};
  carve.take(layer * s.directions * per_layer_direction);
  for (int64_t d = 0; d < s.directions; ++d) {
    out.workspace[d] = carve.take(cell_workspace_size(s));
    out.output[d] = carve.take(TB * s.out());
  }
  const int64_t input_size = TB * s.directions * s.out();
  out.layer_input = layer && saved ? saved + first_inputs + (layer - 1) * input_size : nullptr;
  if (total) *total = first_inputs + (s.layers - 1) * input_size;
  return out;
}

}  // namespace fusedrnn

namespace fusedrnn {

// Runs body(d) for the directions d of a layer: on two threads when there are two directions
// and two threads (each direction then runs single-threaded, with no barrier between them).
template <typename Body>
void for_each_direction(const StackShape& s, Body&& body) {
  run_team(s.directions == 2 ? std::min(2, get_num_threads()) : 1, [&](int member, int members) {
    for (int64_t d = member; d < s.directions; d += members) body(d);
  });
}

// One layer, one direction of any cell: the single-layer kernels through one call.
template <typename T>
void cell_forward(const StackShape& s, int64_t input_size, T* y, T* h_n, T* c_n, T* workspace,
                  T* scratch, const T* x, const T* h0, const T* c0, const LayerWeights<T>& w,
                  const int64_t* batch_sizes) {
  const int64_t T_ = s.steps, B = s.batch, H = s.hidden;
  switch (s.cell) {
    case CellKind::lstm:
      lstm_forward<T>(y, h_n, c_n, lstm_saved(workspace, T_, B, H, s.proj), scratch, x, h0, c0,
                      w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, batch_sizes, T_, B, input_size, H,
                      s.proj);
      break;
    case CellKind::gru:
      gru_forward<T>(y, h_n, gru_saved(workspace, T_, B, H), scratch, x, h0, w.w_ih, w.w_hh,
                     w.b_ih, w.b_hh, batch_sizes, T_, B, input_size, H, s.reset_after);
      break;
    case CellKind::rnn:
      rnn_forward<T>(y, h_n, scratch, x, h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, batch_sizes, T_, B,
                     input_size, H, s.act);
      break;
  }
}

// The backward of steps [t0, t0 + steps) of one layer, one direction: `workspace` is the whole
// sequence's; the sequence arguments (dx, dy, x, y, batch_sizes) start at step t0; h0 / c0 are the
// states entering step t0, dh_n / dc_n the gradients leaving its last step.
template <typename T>
void cell_backward(const StackShape& s, int64_t input_size, int64_t t0, int64_t steps, T* dx,
                   T* dh0, T* dc0, const LayerGrads<T>& g, T* scratch, const T* dy,
                   const T* dh_n, const T* dc_n, const T* x, const T* h0, const T* c0,
                   const LayerWeights<T>& w, const T* y, const T* workspace,
                   const int64_t* batch_sizes) {
  const int64_t B = s.batch, H = s.hidden;
  switch (s.cell) {
    case CellKind::lstm:
      lstm_backward<T>(dx, dh0, dc0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, g.dw_hr, scratch, dy, dh_n,
                       dc_n, x, h0, c0, w.w_ih, w.w_hh, w.w_hr, y,
                       lstm_saved(workspace, s.steps, B, H, s.proj).at(t0), batch_sizes, steps, B,
                       input_size, H, s.proj);
      break;
    case CellKind::gru:
      gru_backward<T>(dx, dh0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, scratch, dy, dh_n, x, h0,
                      w.w_ih, w.w_hh, y, gru_saved(workspace, s.steps, B, H).at(t0), batch_sizes,
                      steps, B, input_size, H, s.reset_after);
      break;
    case CellKind::rnn:
      rnn_backward<T>(dx, dh0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, scratch, dy, dh_n, x, h0,
                      w.w_ih, w.w_hh, y, batch_sizes, steps, B, input_size, H, s.act);
      break;
  }
}

// Rows of [T,B,*] sequences between time order and processing order: row (s,b) of dst is row
// (t,b) of src with t = s, or t = lengths[b]-1-s when `reverse` (each row reversed within its
// own length), and zero where s >= lengths[b]. The map is its own inverse, so it both gathers a
// reverse direction's input and scatters its output back. ld_dst / ld_src are row strides;
// `width` elements of each row are copied (or added, with Accumulate).
template <bool Accumulate, typename T>
void copy_processing_order(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t width,
                           const int64_t* lengths, int64_t steps, int64_t B, bool reverse) {
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = lengths ? lengths[b] : steps;
      T* d = dst + (s * B + b) * ld_dst;
      if (s >= len) {
        if (!Accumulate) std::fill(d, d + width, T(0));
        continue;
      }
      const int64_t t = reverse ? len - 1 - s : s;
      const T* r = src + (t * B + b) * ld_src;
      for (int64_t k = 0; k < width; ++k) d[k] = Accumulate ? d[k] + r[k] : r[k];
    }
  }
}

}  // namespace fusedrnn
