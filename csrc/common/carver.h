// The one way a buffer the caller owns (a workspace, a scratch) is cut into its parts: a planner
// takes the parts in order from a Carver, and the same planner run on a null base only counts,
// which gives the size query. So a size and the layout it sizes cannot disagree.
#pragma once
#include <cstdint>

namespace fusedrnn {

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

}  // namespace fusedrnn
