// Intel AMX (Advanced Matrix Extensions; Xeons from Sapphire Rapids on) for an inference with
// bfloat16 weights (weights_dtype="bfloat16"): all its products, the input projection of a
// sequence and every step.
//
// AMX multiplies tiles: TDPBF16PS adds to a tile of 16 x 16 floats the product of a 16 x 32
// bfloat16 tile (A, row-major) by a 32 x 16 one (B, stored as 16 rows of 16 column pairs: row p
// holds k = 2p and 2p + 1 of each column), each product exact and each sum a float32 one. One
// instruction does 8192 multiply-adds, where an AVX-512 FMA does 16.
//
// A's rows (x, or h in a step) are float32. Each is split exactly into three bfloat16 numbers, hi +
// mid + lo = x: hi is x with its low 16 bits cleared, mid the same of x - hi, lo what is left (at
// most 8 significant bits, so exact). Every product of a part and a bfloat16 weight is exact in
// float32 and the sums are float32: the result is a float32 dot product of x and the rounded
// weights, what the FMA path with the 16-bit panels computes (the sums in another order). The
// three parts of a row sit in one A tile (up to 5 rows of each: a call's rows go in groups of
// even size, and the A and C tiles are configured with just their rows), so one tile product
// covers them, and they are added at the end as hi + (mid + lo). Non-finite x: hi = x (a NaN
// quiet), mid = lo = 0.
//
// Every product with such weights runs on the tiles, a single step of one row too: a layer with
// H = 256, T = 100 on one thread took 0.86-0.89 ms at batch 1 and 2.82-2.93 at batch 8 with its
// steps on the tiles, against 1.01-1.03 and 4.58-4.70 with them on the FMA panels (its input
// projection on the tiles in both; 2 threads, batch 1: 0.59-0.60 against 0.66-0.87 ms). So a
// packing for AMX holds no FMA panels, but for a matrix that the tiles cannot take (below).
// float16 weights stay on the FMA panels: split into two bfloat16 parts each, they measured no
// faster on the tiles.
// Not for a matrix with an infinite weight: times x's parts that are zero it would give NaN where
// the FMA panels give the infinite product (the packing leaves such a matrix out).
#pragma once

#include <cstdint>

#include "common/threading.h"  // ceil_div

namespace fusedrnn {

struct PanelShare;  // common/step_gemm.h

constexpr int64_t kAmxPanelCols = 32;                 // a panel of B: two tiles of 16 columns
constexpr int64_t kAmxTileK = 32;                     // the k of one tile
constexpr int64_t kAmxTileElements = 16 * kAmxTileK;  // bfloat16 in a tile

// Elements of the AMX packing of W [blocks * cols, K] (bfloat16 bits, row-major as the layer's
// parameter) as B = W^T: for each block, each panel of 32 columns (zero past cols) and each k block
// of 32 (zero past K), the two 16-column tiles, one after the other.
inline int64_t amx_panels_size(int64_t K, int64_t blocks, int64_t cols) {
  return blocks * ceil_div(cols, kAmxPanelCols) * ceil_div(K, kAmxTileK) * 2 * kAmxTileElements;
}
inline void pack_amx_panels(uint16_t* dst, const uint16_t* w, int64_t K, int64_t blocks,
                            int64_t cols) {
  const int64_t k_blocks = ceil_div(K, kAmxTileK);
  for (int64_t g = 0; g < blocks; ++g)
    for (int64_t p = 0; p < ceil_div(cols, kAmxPanelCols); ++p)
      for (int64_t kb = 0; kb < k_blocks; ++kb)
        for (int64_t half = 0; half < 2; ++half)
          for (int64_t pair = 0; pair < 16; ++pair)
            for (int64_t c = 0; c < 16; ++c)
              for (int64_t e = 0; e < 2; ++e, ++dst) {
                const int64_t col = p * kAmxPanelCols + half * 16 + c,
                              k = kb * kAmxTileK + 2 * pair + e;
                *dst = col < cols && k < K ? w[(g * cols + col) * K + k] : uint16_t(0);
              }
}

// Whether this CPU and OS let the process use AMX's tiles with bfloat16 (CPUID, and Linux's
// permission for the tile data, asked once).
bool amx_usable();
// Whether inference with bfloat16 weights multiplies on AMX now: usable, not switched off
// (set_amx_enabled: tests and benchmarks compare both paths), and the active instruction set's
// float panels are 32 columns wide (AVX-512), so that every team member's share of the columns
// starts on an AMX panel.
bool amx_active();
void set_amx_enabled(bool enabled);

// For the blocks g in [first, first + count) of W (panels from pack_amx_panels, K columns of W,
// `cols` per block), the member's columns `share` (whole panels of 32 but the last) of
// out[r, (g - first) * cols + j] (+)= a_r . w_{g * cols + j}, r < rows (a_r = a + r * lda).
// Needs amx_active().
void amx_step_gemm(const uint16_t* panels, int64_t K, int64_t cols, int64_t first, int64_t count,
                   const PanelShare& share, int64_t rows, const float* a, int64_t lda, float* out,
                   int64_t ldo, bool accumulate);

}  // namespace fusedrnn
