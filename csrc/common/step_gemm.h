// The recurrent GEMM of one time step, hand-written: out (+)= a @ B, where B (the recurrent weights,
// transposed for a forward, as they are for a backward) is packed once per sequence into panels of
// `nr` columns (two vector registers of the active instruction set), and each team member owns
// whole panels.
//
// Why not BLAS for this one: a step's GEMM has only the running batch rows and runs T times on the
// same weights. BLAS packs the weights again on every call (measured: about 15% of an LSTM's
// samples at B=64, H=512) and picks other kernels, with other rounding, for a member's slice than
// for the whole matrix. Here every output element is one chain of multiply-adds over k in order,
// whatever the tile, the panel or the thread that computes it: the results do not depend on the
// number of threads, bit for bit.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/threading.h"

namespace fusedrnn {

// The widest panel of any instruction set (float on AVX-512: 2 x 16); scratch sizes use it.
constexpr int64_t kMaxPanelWidth = 32;

// The micro-kernel of one instruction set (csrc/step_gemm.inc), in the ISA table.
template <typename T>
struct StepGemmKernels {
  int64_t panel_width;  // nr
  // out[rows, cols] = a[rows, K] @ P (+ out if accumulate), where P [K, cols] is panel_count
  // consecutive panels [K][nr] (cols <= panel_count * nr; the columns past cols are not stored).
  // a and out have row strides lda and ldo.
  void (*multiply)(int64_t rows, int64_t K, const T* a, int64_t lda, const T* panels,
                   int64_t panel_count, int64_t cols, T* out, int64_t ldo, bool accumulate);
};

// B [K, blocks * cols] packed: for each block of `cols` columns, ceil(cols / nr) panels of
// [K][nr], the columns past `cols` zero. A gate GEMM has a block per gate (cols = H).
template <typename T>
struct PackedWeights {
  const T* data = nullptr;
  int64_t K = 0, blocks = 0, cols = 0, nr = 1;
  int64_t panels() const { return (cols + nr - 1) / nr; }  // per block
  const T* panel(int64_t block, int64_t p) const { return data + (block * panels() + p) * K * nr; }
};

// Elements of a packing of B [K, blocks * cols], for any instruction set.
inline int64_t packed_weights_size(int64_t K, int64_t blocks, int64_t cols) {
  return blocks * ((cols + kMaxPanelWidth - 1) / kMaxPanelWidth) * kMaxPanelWidth * K;
}

// A team member's panels [p0, p1) of every block, and the columns [begin, begin + width) of a
// block they cover: the hidden units the member owns in a time loop.
struct PanelShare {
  int64_t p0 = 0, p1 = 0, begin = 0, width = 0;
};
inline PanelShare panel_share(int64_t cols, int64_t nr, int member, int members) {
  const int64_t panels = (cols + nr - 1) / nr;
  PanelShare s;
  s.p0 = share_begin(panels, member, members);
  s.p1 = share_begin(panels, member + 1, members);
  s.begin = std::min(s.p0 * nr, cols);
  s.width = std::min(s.p1 * nr, cols) - s.begin;
  return s;
}

// Packs this member's panels of B[k, n] = src[k * k_stride + n * n_stride] (n over all blocks'
// columns, block after block) into dst [packed_weights_size]: for a forward's h @ W^T with
// W [blocks*cols, K], k_stride = 1 and n_stride = K; for a backward's d @ W with W [K, cols],
// k_stride = cols (W's row stride) and n_stride = 1. Each member packs the panels it multiplies
// with, so no barrier is needed before its own use.
template <typename T>
PackedWeights<T> pack_weights(T* dst, const T* src, int64_t k_stride, int64_t n_stride, int64_t K,
                              int64_t blocks, int64_t cols, int64_t nr, const PanelShare& share) {
  PackedWeights<T> packed{dst, K, blocks, cols, nr};
  for (int64_t g = 0; g < blocks; ++g) {
    for (int64_t p = share.p0; p < share.p1; ++p) {
      T* panel = dst + (g * packed.panels() + p) * K * nr;
      for (int64_t c = 0; c < nr; ++c) {
        const int64_t n = p * nr + c;
        if (n >= cols) {
          for (int64_t k = 0; k < K; ++k) panel[k * nr + c] = T(0);
          continue;
        }
        const T* column = src + (g * cols + n) * n_stride;
        for (int64_t k = 0; k < K; ++k) panel[k * nr + c] = column[k * k_stride];
      }
    }
  }
  return packed;
}

// out (+)= a[rows, K] @ B for the blocks [first, first + count) and this member's panels; block g
// goes to the columns (g - first) * cols + [share.begin, share.begin + share.width) of out.
template <typename T>
void step_gemm(const StepGemmKernels<T>& kernel, const PackedWeights<T>& w, int64_t first,
               int64_t count, const PanelShare& share, int64_t rows, const T* a, int64_t lda,
               T* out, int64_t ldo, bool accumulate) {
  if (share.width <= 0 || rows <= 0) return;
  for (int64_t g = first; g < first + count; ++g)
    kernel.multiply(rows, w.K, a, lda, w.panel(g, share.p0), share.p1 - share.p0, share.width,
                    out + (g - first) * w.cols + share.begin, ldo, accumulate);
}

}  // namespace fusedrnn
