// What stack_forward and stack_backward share: where each layer's buffers live inside the
// caller's `saved` array (one planner serves the size query and the kernels, so they cannot
// disagree; each pass's scratch planner is in its own .cpp), the split of a layer's two
// directions across threads, and the map between time order and processing order.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/carver.h"
#include "common/threading.h"
#include "stack.h"

namespace fusedrnn {

// The pieces of `saved` for layer l, direction d: the cell's workspace and its output [T,B,R] in
// processing order (time reversed per row for d = 1); and the input [T,B,D*R] of every layer l>0.
template <typename T>
struct SavedLayout {
  T* workspace[2];
  T* output[2];
  T* layer_input;  // null for layer 0 (the input is x)
};

template <typename T>
SavedLayout<T> saved_layout(T* saved, const StackShape& s, int64_t layer,
                            int64_t* total = nullptr) {
  const int64_t TB = s.steps * s.batch;
  const int64_t per_layer_direction = cell_workspace_size(s.cell, s) + TB * s.out();
  const int64_t first_inputs = s.layers * s.directions * per_layer_direction;
  SavedLayout<T> out{};
  Carver<T> carve{saved};
  carve.take(layer * s.directions * per_layer_direction);
  for (int64_t d = 0; d < s.directions; ++d) {
    out.workspace[d] = carve.take(cell_workspace_size(s.cell, s));
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
