// The GEMMs of the recurrent kernels, hand-written: out (+)= a @ B, where B (the weights,
// transposed for a forward, as they are for a backward; or x, h, m for a weight gradient, read in
// place) is cut into panels of `nr` columns (two vector registers of the active instruction set),
// packed once per call, and each team member owns whole panels.
//
// Why not BLAS: a step's GEMM has only the running batch rows and runs T times on the same
// weights. BLAS packs the weights again on every call (measured: about 15% of an LSTM's
// samples at B=64, H=512) and picks other kernels, with other rounding, for a member's slice than
// for the whole matrix. Here every output element is one chain of multiply-adds over k in order
// per block of 256 k (the blocks added in order), whatever the tile, the panel or the thread that
// computes it: the results do not depend on the number of threads, bit for bit.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/amx.h"
#include "common/threading.h"

namespace fusedrnn {

// The widest panel of any instruction set (float on AVX-512: 2 x 16); scratch sizes use it.
constexpr int64_t kMaxPanelWidth = 32;

// This thread's buffer for the copied blocks of a transposed A (csrc/step_gemm.inc), big enough
// for every instruction set's block of doubles. One buffer for all instruction sets and both
// types: each thread that runs kernels holds it (128 KiB), where a buffer per instantiation held
// 480 KiB.
constexpr int64_t kTransposedABlockBytes = 64 * 256 * 8;
inline void* transposed_a_block_buffer() {
  alignas(64) static thread_local unsigned char buffer[kTransposedABlockBytes];
  return buffer;
}
// This thread's buffer for a copied block of panels of a B read in place (csrc/step_gemm.inc):
// k steps x the panels of a group, at most kPanelGroupBytes.
constexpr int64_t kPanelGroupBytes = 256 * 1024;
inline void* panel_group_buffer() {
  alignas(64) static thread_local unsigned char buffer[kPanelGroupBytes];
  return buffer;
}

// One call of the micro-kernel: out[rows, cols] = alpha * A[rows, K] @ P (+ out if
// accumulate), where
//   A[r, k] = a[r * lda + k], or a[k * lda + r] if a_transposed;
//   P[k, p * nr + c] = b[p * panel_stride + k * ldb + c] for the panels p < panel_count
//   (cols <= panel_count * nr; the columns past cols are read but not stored), except that with
//   `tail` (B read in place, whose partial last panel is packed) the last panel is
//   P[k, p * nr + c] = tail[k * nr + c].
// B's elements are of T, or (BT = uint16_t, T = float) the bits of float16 or bfloat16 weights.
template <typename T, typename BT = T>
struct PanelProduct {
  int64_t rows = 0, K = 0;
  const T* a = nullptr;
  int64_t lda = 0;
  bool a_transposed = false;
  const BT* b = nullptr;
  int64_t ldb = 0, panel_stride = 0, panel_count = 0, cols = 0;
  const BT* tail = nullptr;
  T* out = nullptr;
  int64_t ldo = 0;
  bool accumulate = false;
  T alpha = 1;
};

// Which single steps of an instruction set read W in place as out^T = W a^T
// (transposed_step_fits): none, those of half a panel of rows or more, or those whose rows fill
// whole panels (kTransposedSingleStep in csrc/step_gemm.inc).
enum class TransposedStep { never, from_half_panel, whole_panels };

// The micro-kernel of one instruction set (csrc/step_gemm.inc), in the ISA table, and its packing
// of a panel of B = W^T: panel[k * nr + c] = w[c * ld + k] for c < valid (zero up to nr), k < K.
template <typename T>
struct StepGemmKernels {
  int64_t panel_width;  // nr
  void (*multiply)(const PanelProduct<T>& m);
  void (*pack_transposed)(T* panel, const T* w, int64_t ld, int64_t K, int64_t valid);
  // y[r*ldy + j] (+)= x_r . w_j for rows x_r = x + r*ldx, j < n, w_j = w + j*ldw: W read in
  // place (csrc/row_dot.inc)
  void (*dot_rows)(int64_t n, int64_t k, const T* x, int64_t ldx, int64_t rows, const T* w,
                   int64_t ldw, T* y, int64_t ldy, bool accumulate);
  // whether a single step may read W in place as out^T = W a^T (transposed_step_fits)
  TransposedStep transposed_single_step;
};

// The 16-bit formats of weights an inference may keep (weights_dtype): the micro-kernel widens
// them to float as it loads them (csrc/step_gemm.inc).
enum class HalfFormat : int { float16 = 0, bfloat16 = 1 };
using HalfMultiply = void (*)(const PanelProduct<float, uint16_t>& m);
struct HalfStepGemmKernels {
  HalfMultiply multiply[2];  // by HalfFormat
};

// The float value of the IEEE half-precision number with these bits (subnormals, infinities and
// NaN included): the portable build's conversion, where x86 has F16C.
inline float float16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // infinity or NaN
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal: rebias the exponent (127 - 15)
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    __builtin_memcpy(&bits, &magnitude, sizeof(bits));
    bits |= sign;
  }
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// B [K, blocks * cols] as panels of nr columns: for each block of `cols` columns, ceil(cols / nr)
// panels. A panel is either packed ([K][nr] contiguous, the columns past `cols` zero) or, for a
// row-major matrix used once, read in place (rows ld apart); then only a partial last panel
// (`tail`) is packed, so that no read passes the end of a row. A gate GEMM has a block per gate
// (cols = H).
template <typename T>
struct PackedWeights {
  const T* data = nullptr;
  int64_t K = 0, blocks = 0, cols = 0, nr = 1;
  int64_t ld = 1;            // between the rows of a panel
  int64_t panel_stride = 0;  // between panels
  int64_t block_stride = 0;  // between blocks
  const T* tail = nullptr;   // in place: the packed last panel of each block's, or null
  int64_t panels() const { return ceil_div(cols, nr); }  // per block
  const T* panel(int64_t block, int64_t p) const {
    return data + block * block_stride + p * panel_stride;
  }
};

// Elements of a packing of B [K, blocks * cols], for any instruction set; and of the tail panel of
// B [K, cols] read in place.
inline int64_t packed_weights_size(int64_t K, int64_t blocks, int64_t cols) {
  return blocks * ceil_div(cols, kMaxPanelWidth) * kMaxPanelWidth * K;
}
inline int64_t tail_panel_size(int64_t K) { return kMaxPanelWidth * K; }

// A team member's panels [p0, p1) of every block, and the columns [begin, begin + width) of a
// block they cover: the hidden units the member owns in a time loop.
struct PanelShare {
  int64_t p0 = 0, p1 = 0, begin = 0, width = 0;
};
inline PanelShare panel_share(int64_t cols, int64_t nr, int member, int members) {
  const int64_t panels = ceil_div(cols, nr);
  PanelShare s;
  s.p0 = share_begin(panels, member, members);
  s.p1 = share_begin(panels, member + 1, members);
  s.begin = std::min(s.p0 * nr, cols);
  s.width = std::min(s.p1 * nr, cols) - s.begin;
  return s;
}

// Copies B[k, n] = src[k * k_stride + n * n_stride] (n over all blocks' columns, block after block;
// zero past `cols`) into the panel p of block g of `packed`, whose panels are [K][nr] contiguous.
// One of the strides is 1: n_stride = 1 packs rows of src, k_stride = 1 rows of src^T.
template <typename T>
void pack_panel(const StepGemmKernels<T>& kernel, T* panel, const T* src, int64_t k_stride,
                int64_t n_stride, int64_t K, int64_t cols, int64_t g, int64_t p) {
  const int64_t nr = kernel.panel_width;
  const int64_t valid = std::max<int64_t>(0, std::min(nr, cols - p * nr));
  const T* first = src + (g * cols + p * nr) * n_stride;
  if (n_stride == 1) {  // rows of src: copy row by row
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t c = 0; c < valid; ++c) panel[k * nr + c] = first[k * k_stride + c];
      for (int64_t c = valid; c < nr; ++c) panel[k * nr + c] = T(0);
    }
    return;
  }
  kernel.pack_transposed(panel, first, n_stride, K, valid);  // k_stride == 1
}

// Packs this member's panels of B[k, n] = src[k * k_stride + n * n_stride] into dst
// [packed_weights_size], for `kernel`: for a forward's h @ W^T with W [blocks*cols, K],
// k_stride = 1 and n_stride = K; for a backward's d @ W with W [K, cols], k_stride = cols and
// n_stride = 1. Each member packs the panels it multiplies with, so it needs no barrier before
// its own use.
template <typename T>
PackedWeights<T> pack_weights(const StepGemmKernels<T>& kernel, T* dst, const T* src,
                              int64_t k_stride, int64_t n_stride, int64_t K, int64_t blocks,
                              int64_t cols, const PanelShare& share) {
  const int64_t nr = kernel.panel_width;
  PackedWeights<T> packed{dst, K, blocks, cols, nr, nr, K * nr, 0, nullptr};
  packed.block_stride = packed.panels() * packed.panel_stride;
  for (int64_t g = 0; g < blocks; ++g)
    for (int64_t p = share.p0; p < share.p1; ++p)
      pack_panel(kernel, dst + g * packed.block_stride + p * packed.panel_stride, src, k_stride,
                 n_stride, K, cols, g, p);
  return packed;
}

// B [K, cols] = src with row stride ld, read in place, with a partial last panel packed into
// tail_buffer [tail_panel_size] by the member that owns it.
template <typename T>
PackedWeights<T> in_place_panels(const StepGemmKernels<T>& kernel, const T* src, int64_t ld,
                                 int64_t K, int64_t cols, T* tail_buffer, const PanelShare& share) {
  const int64_t nr = kernel.panel_width;
  PackedWeights<T> in_place{src, K, 1, cols, nr, ld, nr, 0, nullptr};
  if (cols % nr) {
    in_place.tail = tail_buffer;
    if (share.p0 < share.p1 && share.p1 == in_place.panels())
      pack_panel(kernel, tail_buffer, src, ld, 1, K, cols, 0, in_place.panels() - 1);
  }
  return in_place;
}

// The panels of B = W [K, cols] (row-major) by which a backward's time loop multiplies the gate
// gradients, dh_prev = dgates W, for this member's share: packed into `packed`
// [packed_weights_size(K, 1, cols)] when the loop reads them step after step; for a single step
// read in place, since packing would read and write W once more than its one product reads it
// (the partial last panel still goes into `packed`). Either way the same bits.
template <typename T>
PackedWeights<T> backward_step_panels(const StepGemmKernels<T>& kernel, T* packed, const T* w,
                                      int64_t K, int64_t cols, const PanelShare& share,
                                      int64_t steps) {
  if (steps == 1) return in_place_panels(kernel, w, cols, K, cols, packed, share);
  return pack_weights(kernel, packed, w, cols, 1, K, 1, cols, share);
}

// out (+)= alpha * A[rows, K] @ B for the blocks [first, first + count) and this member's panels;
// block g goes to the columns (g - first) * cols + [share.begin, share.begin + share.width) of
// out.
// A[r, k] = a[r * lda + k], or a[k * lda + r] if a_transposed.
// `multiply`: the micro-kernel for panels of BT (StepGemmKernels<T>::multiply for BT = T).
template <typename T, typename BT>
void step_gemm(void (*multiply)(const PanelProduct<T, BT>&), const PackedWeights<BT>& w,
               int64_t first, int64_t count, const PanelShare& share, int64_t rows, const T* a,
               int64_t lda, T* out, int64_t ldo, bool accumulate, bool a_transposed = false,
               T alpha = T(1)) {
  if (share.width <= 0 || rows <= 0) return;
  PanelProduct<T, BT> m;
  m.alpha = alpha;
  m.rows = rows;
  m.K = w.K;
  m.a = a;
  m.lda = lda;
  m.a_transposed = a_transposed;
  m.ldo = ldo;
  m.accumulate = accumulate;
  // in place, a partial last panel is packed: the micro-kernel reads it from w.tail
  const bool has_tail = w.tail && share.p1 == w.panels();
  for (int64_t g = first; g < first + count; ++g) {
    T* block_out = out + (g - first) * w.cols;
    m.b = w.panel(g, share.p0);
    m.ldb = w.ld;
    m.panel_stride = w.panel_stride;
    m.panel_count = share.p1 - share.p0;
    m.cols = share.width;
    m.tail = has_tail ? w.tail : nullptr;
    m.out = block_out + share.begin;
    multiply(m);
  }
}
template <typename T>
void step_gemm(const StepGemmKernels<T>& kernel, const PackedWeights<T>& w, int64_t first,
               int64_t count, const PanelShare& share, int64_t rows, const T* a, int64_t lda,
               T* out, int64_t ldo, bool accumulate, bool a_transposed = false, T alpha = T(1)) {
  step_gemm(kernel.multiply, w, first, count, share, rows, a, lda, out, ldo, accumulate,
            a_transposed, alpha);
}

// The weights of a forward's step GEMMs: panels of T packed by the call (`native`); in a float
// inference with weights_dtype, 16-bit panels the layer packed once ahead (`half`, multiplied by
// `multiply_half`; packed_half_panels below gives their layout); or, for a single step of few
// rows (in_place_step in common/sequence.h), W itself read in place (`in_place`, [blocks * cols,
// K] row-major, multiplied by dot products, each row of W read from memory once: packing would
// read and write it once more than the product reads it, and transpose it on the way).
// Up to kMaxInPlaceRows rows always; up to kMaxInPlaceRowsLargeWeights when the matrix (W_ih or
// W_hh, each judged alone) takes at least kInPlaceWeightBytes, past a core's L2, where packing
// costs a pass through L3 each way.
// Measured on Zen 3, one single step, packed time / in-place time (> 1: in place is faster),
// float32, 1 thread: LSTM H=512 (4 MiB) 1.27-1.50 at 24-32 rows, 1.06-1.13 at 48-64, 0.98-1.11
// at 96-128; H=1024 1.48-1.73 at 24-32, 1.08-1.31 at 48-64; but H=128 (256 KiB) 0.90-0.96 at
// 24-32 and 0.77-0.83 at 48-64, H=256 (1 MiB) 0.91-1.09 at 24-32. GRU and RNN alike; float64
// LSTM H=256 (2 MiB) 1.16-1.48 at 24-32.
constexpr int64_t kMaxInPlaceRows = 16;
// Read in place as out^T = W a^T (transposed_step_fits), up to 32 rows whatever the size: on a
// Xeon with AVX-512 (1 thread, float32, packed against in place) an LSTM step at H = 256 (1 MiB)
// took 0.52 against 0.37 ms at 32 rows, a GRU 0.39 against 0.27; at H = 128 the two were even,
// and at 64 rows too (H = 256: 0.77 ms).
constexpr int64_t kMaxTransposedInPlaceRows = 32;
constexpr int64_t kMaxInPlaceRowsLargeWeights = 64;
constexpr int64_t kInPlaceWeightBytes = int64_t(3) << 19;  // 1.5 MiB
template <typename T>
struct StepWeights {
  const StepGemmKernels<T>* kernel = nullptr;
  PackedWeights<T> native;
  HalfMultiply multiply_half = nullptr;
  PackedWeights<uint16_t> half;
  // bfloat16 W's AMX panels (common/amx.h), when it has them: then `half` has no data
  const uint16_t* amx = nullptr;
  const T* in_place = nullptr;
  int64_t in_place_K = 0, in_place_cols = 0;
  bool in_place_transposed = false;  // in place as out^T = W a^T (transposed_step_gemm)
};

// A single step's product read in place the other way round, out^T = W a^T: the rows of a
// (few, and short) are packed into panels, and W's rows are the micro-kernel's A, read in place
// as it broadcasts their elements. Its multiply-adds then run from registers as in a sequence's
// steps, where a dot product of rows (csrc/row_dot.inc) ends each output in a sum of lanes and
// rereads W from L2 for every few rows. Each output is the same chain of multiply-adds, in the
// same blocks of k, as with W packed (fma(w, x, acc) = fma(x, w, acc)): a single step gives the
// bits of a sequence's step.
// Its time hardly changes with the rows that fill a panel. Measured on a Xeon with AVX-512 (1
// thread, one LSTM step at I = H = 512, best of 150), float32: 1.12-1.25 ms at 16-32 rows and
// 2.15-2.29 at 40-64, where the dot products took 0.77 ms at 8 rows, 1.40 at 16, 2.53-2.63 at 32
// and 5.1 at 64; float64: 1.26-2.28 ms at 12-32 rows against 2.15-5.32. So it takes a step from
// half a panel of rows on (transposed_step_fits), on the instruction sets where it pays
// (kTransposedSingleStep in csrc/step_gemm.inc).
// W's rows per multiply: their block of out^T [rows of W][a's rows] is copied out (and, when
// the product adds to out, in) while it is in L1.
constexpr int64_t kTransposedStepChunk = 64;
// This thread's buffer for a's panels and a chunk of out^T.
constexpr int64_t kTransposedStepBytes = 256 * 1024;
inline void* transposed_step_buffer() {
  alignas(64) static thread_local unsigned char buffer[kTransposedStepBytes];
  return buffer;
}
// Panels of a's rows that fit the buffer at a time beside a chunk of out^T (0: not one, for K
// past about 2000 in float on AVX-512).
template <typename T>
int64_t transposed_step_panels(const StepGemmKernels<T>& kernel, int64_t K) {
  return kTransposedStepBytes /
         ((K + kTransposedStepChunk) * kernel.panel_width * int64_t(sizeof(T)));
}
// Whether a single step of B rows (all of a step's, whichever of them a member then runs) by a
// W with K columns is read in place as out^T = W a^T rather than by dot products: from half a
// panel of rows on, and when one panel of them fits the buffer. Decided by B, never by a
// member's rows, so the split of a team never changes a bit.
template <typename T>
bool transposed_step_fits(const StepGemmKernels<T>& kernel, int64_t B, int64_t K) {
  const bool rows_fit = kernel.transposed_single_step == TransposedStep::from_half_panel
                            ? 2 * B >= kernel.panel_width
                        : kernel.transposed_single_step == TransposedStep::whole_panels
                            ? B > 0 && B % kernel.panel_width == 0
                            : false;
  return rows_fit && transposed_step_panels(kernel, K) > 0;
}
// For the blocks g in [first, first + count) of W [blocks * cols, K] (read in place), the
// member's columns `share` of out[r, (g - first) * cols + j] (+)= a_r . w_{g * cols + j}, r <
// rows (a_r = a + r*lda, out's row stride ldo), as out^T = W a^T, a's rows in groups of as many
// panels as fit the buffer (transposed_step_panels must be at least 1).
template <typename T>
void transposed_step_gemm(const StepGemmKernels<T>& kernel, const T* w, int64_t K, int64_t cols,
                          int64_t first, int64_t count, const PanelShare& share, const T* a,
                          int64_t lda, int64_t rows, T* out, int64_t ldo, bool accumulate) {
  const int64_t nr = kernel.panel_width;
  const int64_t group_rows = transposed_step_panels(kernel, K) * nr;
  T* const a_panels = static_cast<T*>(transposed_step_buffer());  // [panels][K][nr]
  for (int64_t r0 = 0; r0 < rows; r0 += group_rows) {
    const int64_t group = std::min(group_rows, rows - r0);
    const int64_t panels = ceil_div(group, nr), padded = panels * nr;
    T* const out_t = a_panels + K * padded;  // [chunk][padded]
    for (int64_t p = 0; p < panels; ++p)
      kernel.pack_transposed(a_panels + p * K * nr, a + (r0 + p * nr) * lda, lda, K,
                             std::min(nr, group - p * nr));
    PanelProduct<T> m;
    m.K = K;
    m.lda = K;
    m.b = a_panels;
    m.ldb = nr;
    m.panel_stride = K * nr;
    m.panel_count = panels;
    m.cols = group;
    m.out = out_t;
    m.ldo = padded;
    m.accumulate = accumulate;
    for (int64_t g = first; g < first + count; ++g) {
      const T* w_g = w + (g * cols + share.begin) * K;
      T* out_g = out + r0 * ldo + (g - first) * cols + share.begin;
      for (int64_t j0 = 0; j0 < share.width; j0 += kTransposedStepChunk) {
        const int64_t nj = std::min(kTransposedStepChunk, share.width - j0);
        T* const o = out_g + j0;
        if (accumulate)
          for (int64_t j = 0; j < nj; ++j)
            for (int64_t r = 0; r < group; ++r) out_t[j * padded + r] = o[r * ldo + j];
        m.rows = nj;
        m.a = w_g + j0 * K;
        kernel.multiply(m);
        for (int64_t r = 0; r < group; ++r)
          for (int64_t j = 0; j < nj; ++j) o[r * ldo + j] = out_t[j * padded + r];
      }
    }
  }
}

template <typename T>
void step_gemm(const StepWeights<T>& w, int64_t first, int64_t count, const PanelShare& share,
               int64_t rows, const T* a, int64_t lda, T* out, int64_t ldo, bool accumulate) {
  if (w.in_place) {
    if (share.width <= 0) return;
    const int64_t K = w.in_place_K, cols = w.in_place_cols;
    if (w.in_place_transposed) {
      transposed_step_gemm(*w.kernel, w.in_place, K, cols, first, count, share, a, lda, rows, out,
                           ldo, accumulate);
      return;
    }
    for (int64_t g = first; g < first + count; ++g)
      w.kernel->dot_rows(share.width, K, a, lda, rows, w.in_place + (g * cols + share.begin) * K, K,
                         out + (g - first) * cols + share.begin, ldo, accumulate);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (w.amx) {
      amx_step_gemm(w.amx, w.half.K, w.half.cols, first, count, share, rows, a, lda, out, ldo,
                    accumulate);
      return;
    }
    if (w.multiply_half) {
      step_gemm(w.multiply_half, w.half, first, count, share, rows, a, lda, out, ldo, accumulate);
      return;
    }
  }
  step_gemm(*w.kernel, w.native, first, count, share, rows, a, lda, out, ldo, accumulate);
}

// 16-bit weights packed ahead, once: W [blocks * cols, K] (row-major, as the layer's parameter)
// becomes B = W^T as `packed_weights` would pack it for panels of nr columns (zero past cols),
// all panels of every block. half_panels_size elements.
inline int64_t half_panels_size(int64_t K, int64_t blocks, int64_t cols, int64_t nr) {
  return blocks * ceil_div(cols, nr) * nr * K;
}
// Where column c (< nr) of a row of a bfloat16 panel is stored: the micro-kernel takes the row's
// two vectors from the lower and the upper halves of its 32-bit lanes (BFloat16Panels in
// csrc/step_gemm.inc), so column c of vector c / W (W = nr / 2 floats) is word 2 (c % W) + c / W.
inline int64_t bfloat16_panel_position(int64_t c, int64_t nr) {
  const int64_t W = nr / 2;
  return 2 * (c % W) + c / W;
}
// `format` decides the order of a panel's row: float16 in column order, bfloat16 as above.
inline void pack_half_panels(uint16_t* dst, const uint16_t* w, int64_t K, int64_t blocks,
                             int64_t cols, int64_t nr, HalfFormat format) {
  for (int64_t g = 0; g < blocks; ++g)
    for (int64_t p = 0; p < ceil_div(cols, nr); ++p)
      for (int64_t k = 0; k < K; ++k, dst += nr)
        for (int64_t c = 0; c < nr; ++c) {
          const int64_t col = p * nr + c;
          const int64_t at = format == HalfFormat::bfloat16 ? bfloat16_panel_position(c, nr) : c;
          dst[at] = col < cols ? w[(g * cols + col) * K + k] : uint16_t(0);
        }
}
// The view of such a packing (every member's panels are there).
inline PackedWeights<uint16_t> packed_half_panels(const uint16_t* data, int64_t K, int64_t blocks,
                                                  int64_t cols, int64_t nr) {
  PackedWeights<uint16_t> packed{data, K, blocks, cols, nr, nr, K * nr, 0, nullptr};
  packed.block_stride = packed.panels() * packed.panel_stride;
  return packed;
}

}  // namespace fusedrnn
