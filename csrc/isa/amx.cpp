// AMX's products with bfloat16 weights (common/amx.h); x86-64 Linux with GCC or clang only:
// elsewhere amx_usable() is false and the FMA panels do the work.
#include "common/amx.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/isa_table.h"

#if FUSEDRNN_X86 && defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define FUSEDRNN_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define FUSEDRNN_AMX 0
#endif
#if FUSEDRNN_AMX && !defined(__clang__)
// GCC 12's AVX-512 intrinsics fill their unused operand with _mm512_undefined_epi32(), which it
// then reports as maybe used uninitialized (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fusedrnn {
namespace {
std::atomic<bool> g_amx_enabled{true};

#if FUSEDRNN_AMX
#define FUSEDRNN_AMX_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,amx-tile,amx-bf16")))

// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24); then Linux's permission for the
// tile data (arch_prctl ARCH_REQ_XCOMP_PERM of XFEATURE_XTILEDATA, Linux 5.16 on), without which
// the first tile instruction kills the process.
bool detect_amx() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(edx & (1u << 22)) || !(edx & (1u << 24))) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// The tile configuration (LDTILECFG's 64 bytes): every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
// Tiles: C0..C3 = 0..3 (two groups of rows by two tiles of columns), A0, A1 = 4, 5, B0, B1 = 6, 7.
// A and C tiles have the rows of a group's three parts (3 * group_rows): a tile load costs about
// its rows (on the 2-core Xeon, 16 rows 17.5 ns, 3 rows 2.3 ns, a product 5.5 ns), and at batch 1,
// where each B tile serves one product, A's loads were a third of the loop. An LSTM inference at
// B = 1, H = 256, T = 100 on one thread took 0.78-0.84 ms with them against 0.92-0.98 with 16.
TileConfig tile_config(int64_t group_rows) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.bytes_per_row[t] = 64;
    c.rows[t] = static_cast<uint8_t>(t < 6 ? 3 * group_rows : 16);
  }
  return c;
}

// At most 5 x rows per A tile: with n rows in a group, hi in tile rows 0 .. n-1, mid n .. 2n-1,
// lo 2n .. 3n-1 (n = 5: rows 0-4, 5-9, 10-14).
constexpr int64_t kGroupRows = 5;
// A's packed groups per pass over the rows: about this many bytes (L2 holds them while every
// panel of B passes by), two groups at least.
constexpr int64_t kPackedABytes = 128 * 1024;
// This thread's buffer of at least `elements`, on a 64-byte line.
uint16_t* packed_a_buffer(int64_t elements) {
  thread_local std::vector<uint16_t> buffer;
  constexpr int64_t line = 64 / sizeof(uint16_t);
  if (int64_t(buffer.size()) < elements + line) buffer.resize(elements + line);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + (64 - address % 64) % 64 / sizeof(uint16_t);
}

// The bfloat16 bits of the 16 floats `bits` holds after their low 16 bits were cleared.
FUSEDRNN_AMX_TARGET inline __m256i top_halves(__m512i bits) {
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
}

// Row s of an A tile (one group's k block, group_rows rows) from 32 floats of x (n <= 32 of them
// valid, zero past): their hi, mid and lo parts in tile rows s, s + group_rows, s + 2 * group_rows.
FUSEDRNN_AMX_TARGET void split_into_tile(uint16_t* tile, int64_t s, int64_t group_rows,
                                         const float* x, int64_t n) {
  const __m512i top = _mm512_set1_epi32(int(0xFFFF0000u));
  const __m512i exponent = _mm512_set1_epi32(0x7F800000), quiet = _mm512_set1_epi32(0x00400000);
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, n - 16 * half));
    const __mmask16 valid = static_cast<__mmask16>((1u << left) - 1);
    const __m512i xb = _mm512_castps_si512(_mm512_maskz_loadu_ps(valid, x + 16 * half));
    const __mmask16 finite = _mm512_cmpneq_epi32_mask(_mm512_and_si512(xb, exponent), exponent);
    const __mmask16 nan = _mm512_mask_cmpneq_epi32_mask(~finite, _mm512_andnot_si512(top, xb),
                                                        _mm512_setzero_si512());
    // hi: x chopped to bfloat16 (a NaN keeps a quiet NaN's top bits: its payload may be low)
    const __m512i hi =
        _mm512_mask_or_epi32(_mm512_and_si512(xb, top), nan, _mm512_and_si512(xb, top), quiet);
    const __m512 rest =
        _mm512_maskz_sub_ps(finite, _mm512_castsi512_ps(xb), _mm512_castsi512_ps(hi));
    const __m512i mid = _mm512_and_si512(_mm512_castps_si512(rest), top);
    const __m512 lo = _mm512_sub_ps(rest, _mm512_castsi512_ps(mid));
    uint16_t* row = tile + s * kAmxTileK + 16 * half;
    _mm256_store_si256(reinterpret_cast<__m256i*>(row), top_halves(hi));
    _mm256_store_si256(reinterpret_cast<__m256i*>(row + group_rows * kAmxTileK), top_halves(mid));
    _mm256_store_si256(reinterpret_cast<__m256i*>(row + 2 * group_rows * kAmxTileK),
                       top_halves(_mm512_castps_si512(lo)));
  }
}

// x's rows [0, n) (row stride lda, K columns) as groups of group_rows in A tiles:
// packed[(group * k_blocks + kb) * kAmxTileElements]. A last group's missing rows hold whatever
// was there: an output row reads its own A row only, and those are never read.
FUSEDRNN_AMX_TARGET void pack_rows(uint16_t* packed, const float* x, int64_t lda, int64_t n,
                                   int64_t K, int64_t group_rows) {
  const int64_t k_blocks = ceil_div(K, kAmxTileK);
  for (int64_t r = 0; r < n; ++r) {
    uint16_t* group = packed + r / group_rows * k_blocks * kAmxTileElements;
    for (int64_t kb = 0; kb < k_blocks; ++kb)
      split_into_tile(group + kb * kAmxTileElements, r % group_rows, group_rows,
                      x + r * lda + kb * kAmxTileK, std::min(kAmxTileK, K - kb * kAmxTileK));
  }
}

// The product of one or two groups of A (rows) by one panel of B (32 columns) over every k block:
// C0, C1 the first group's two 16-column tiles, C2, C3 the second's.
template <bool kTwoGroups>
FUSEDRNN_AMX_TARGET void multiply_panel(const uint16_t* a, const uint16_t* b, int64_t k_blocks) {
  _tile_zero(0);
  _tile_zero(1);
  if (kTwoGroups) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const uint16_t* a1 = a + k_blocks * kAmxTileElements;
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    const uint16_t* bk = b + kb * 2 * kAmxTileElements;
    _tile_loadd(4, a + kb * kAmxTileElements, 64);
    _tile_loadd(6, bk, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (kTwoGroups) {
      _tile_loadd(5, a1 + kb * kAmxTileElements, 64);
      _tile_dpbf16ps(2, 5, 6);
    }
    _tile_loadd(7, bk + kAmxTileElements, 64);
    _tile_dpbf16ps(1, 4, 7);
    if (kTwoGroups) _tile_dpbf16ps(3, 5, 7);
  }
}

// out's rows of one group (n of its group_rows) and `cols` columns (<= 32) from the C tiles `c`
// (two, 16 x 16 floats each): hi + (mid + lo), added to out's values when `accumulate`.
FUSEDRNN_AMX_TARGET void write_group(const float* c, int64_t n, int64_t group_rows, int64_t cols,
                                     float* out, int64_t ldo, bool accumulate) {
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, cols - 16 * half));
    if (!left) break;
    const __mmask16 valid = static_cast<__mmask16>((1u << left) - 1);
    const float* tile = c + half * 256;
    for (int64_t s = 0; s < n; ++s) {
      const __m512 hi = _mm512_load_ps(tile + s * 16);
      const __m512 mid = _mm512_load_ps(tile + (s + group_rows) * 16);
      const __m512 lo = _mm512_load_ps(tile + (s + 2 * group_rows) * 16);
      __m512 sum = _mm512_add_ps(hi, _mm512_add_ps(mid, lo));
      float* o = out + s * ldo + 16 * half;
      if (accumulate) sum = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, o), sum);
      _mm512_mask_storeu_ps(o, valid, sum);
    }
  }
}

FUSEDRNN_AMX_TARGET void amx_gemm(const uint16_t* panels, int64_t K, int64_t cols, int64_t first,
                                  int64_t count, const PanelShare& share, int64_t rows,
                                  const float* a, int64_t lda, float* out, int64_t ldo,
                                  bool accumulate) {
  const int64_t k_blocks = ceil_div(K, kAmxTileK);
  const int64_t group_elements = k_blocks * kAmxTileElements;
  const int64_t panel_elements = 2 * group_elements;  // a panel of B: two tiles per k block
  const int64_t block_panels = ceil_div(cols, kAmxPanelCols);
  const int64_t pass_groups =  // an even number
      std::max<int64_t>(2, kPackedABytes / int64_t(sizeof(uint16_t)) / group_elements / 2 * 2);
  uint16_t* const packed_a = packed_a_buffer(pass_groups * group_elements);
  alignas(64) float c[4 * 256];
  int64_t configured_rows = 0;  // the group rows of the tile configuration loaded
  for (int64_t r0 = 0; r0 < rows; r0 += pass_groups * kGroupRows) {
    const int64_t n = std::min(pass_groups * kGroupRows, rows - r0);
    const int64_t groups = ceil_div(n, kGroupRows);
    const int64_t group_rows = ceil_div(n, groups);  // the pass's rows in groups of even size
    if (group_rows != configured_rows) {
      const TileConfig config = tile_config(group_rows);
      _tile_loadconfig(&config);
      configured_rows = group_rows;
    }
    pack_rows(packed_a, a + r0 * lda, lda, n, K, group_rows);
    for (int64_t g = first; g < first + count; ++g)
      for (int64_t p = share.p0; p < share.p1; ++p) {
        const uint16_t* b = panels + (g * block_panels + p) * panel_elements;
        const int64_t col0 = p * kAmxPanelCols;
        const int64_t width = std::min(kAmxPanelCols, cols - col0);
        float* out_panel = out + r0 * ldo + (g - first) * cols + col0;
        for (int64_t q = 0; q < groups; q += 2) {
          const uint16_t* a_q = packed_a + q * group_elements;
          const bool two = q + 1 < groups;
          if (two)
            multiply_panel<true>(a_q, b, k_blocks);
          else
            multiply_panel<false>(a_q, b, k_blocks);
          _tile_stored(0, c, 64);
          _tile_stored(1, c + 256, 64);
          if (two) {
            _tile_stored(2, c + 512, 64);
            _tile_stored(3, c + 768, 64);
          }
          for (int64_t i = 0; i < (two ? 2 : 1); ++i) {
            const int64_t row = (q + i) * group_rows;
            write_group(c + 512 * i, std::min(group_rows, n - row), group_rows, width,
                        out_panel + row * ldo, ldo, accumulate);
          }
        }
      }
  }
  _tile_release();
}
#endif  // FUSEDRNN_AMX
}  // namespace

bool amx_usable() {
#if FUSEDRNN_AMX
  static const bool usable = isa_supported("avx512") && detect_amx();
  return usable;
#else
  return false;
#endif
}

bool amx_active() {
  return g_amx_enabled.load(std::memory_order_relaxed) &&
         step_gemm_kernels<float>().panel_width == kAmxPanelCols && amx_usable();
}

void set_amx_enabled(bool enabled) { g_amx_enabled.store(enabled, std::memory_order_relaxed); }

void amx_step_gemm(const uint16_t* panels, int64_t K, int64_t cols, int64_t first, int64_t count,
                   const PanelShare& share, int64_t rows, const float* a, int64_t lda, float* out,
                   int64_t ldo, bool accumulate) {
#if FUSEDRNN_AMX
  if (rows <= 0 || share.width <= 0 || count <= 0) return;
  amx_gemm(panels, K, cols, first, count, share, rows, a, lda, out, ldo, accumulate);
#else
  (void)panels, (void)K, (void)cols, (void)first, (void)count, (void)share, (void)rows, (void)a,
      (void)lda, (void)out, (void)ldo, (void)accumulate;
#endif
}

}  // namespace fusedrnn
