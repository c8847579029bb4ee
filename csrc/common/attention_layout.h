// What the attention forward and backward drivers share: scratch layout, the work split, the
// address of a mask tile, the dropout keys of a tile's rows (csrc/attention.h is the contract).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "attention.h"
#include "common/isa_table.h"

namespace fusedrnn {

// Scratch blocks start on 64-byte boundaries relative to the scratch base (16 floats / 8 doubles).
inline int64_t round_block(int64_t n) { return (n + 15) / 16 * 16; }

// Below this many multiply-adds a call runs on one thread: starting a team and waking its
// members costs more than a second thread saves, and on few cores idle members of one pool spin
// while another library's pool wants the cores (tiny decoding steps were 100x slower). Tests set
// it to 0 to run the team on tiny sizes.
std::atomic<int64_t>& attention_min_team_work();

// sum over i in [0, L) of clamp(i + c, 0, len): the keys below a bound that moves with the row.
inline int64_t sum_of_clamped_rows(int64_t L, int64_t c, int64_t len) {
  const int64_t first = std::min(L, std::max<int64_t>(0, -c));  // i + c > 0 from here on
  const int64_t full = std::min(L, std::max(first, len - c));   // i + c >= len from here on
  const int64_t n = full - first;
  return n * (first + full - 1) / 2 + n * c + (L - full) * len;
}

// What a call of attention costs, for the team-size decision (attention_team_size): the
// multiply-adds of its visible (query, key) pairs per feature, and the keys and values it reads
// (a decoding step, one query over a cache, is bound by reading them).
struct AttentionWork {
  double pairs = 0;      // visible (query, key) pairs, over the batch and the query heads
  double keys_read = 0;  // visible keys, over the batch and the kv heads
  // multiply-adds `macs_per_pair` per visible pair, plus a read key's `features` (E + Ev), each
  // weighted as kReadWeight multiply-adds: on one Zen 3 core a step of attention reads memory at
  // about 6.5 G values/s and multiplies-adds at about 50 G/s.
  static constexpr double kReadWeight = 8;
  double weighted(double macs_per_pair, double features) const {
    return pairs * macs_per_pair + kReadWeight * keys_read * features;
  }
};
inline AttentionWork attention_work(const AttentionShape& s, const AttentionOptions& o) {
  AttentionWork w;
  for (int64_t n = 0; n < s.batch; ++n) {
    const int64_t len = o.key_lengths ? o.key_lengths[n] : s.S;
    const KeyRange keys = visible_keys(o, s.L, s.S, n, 0, s.L);
    const int64_t d = keys.shift;
    // row i sees the keys [lower(i), upper(i)): upper = min(len, i + d + 1) if causal, else len;
    // lower = max(0, i + d - window + 1) with a window, else 0 (both clamped to [0, len])
    const int64_t upper = o.causal ? sum_of_clamped_rows(s.L, d + 1, len) : s.L * len;
    const int64_t lower = o.window > 0 ? sum_of_clamped_rows(s.L, d - o.window + 1, len) : 0;
    w.pairs += static_cast<double>(upper - lower) * static_cast<double>(s.heads_q);
    w.keys_read += static_cast<double>(keys.end - keys.begin) * static_cast<double>(s.heads_kv);
  }
  return w;
}

// Threads for a call of `work` multiply-adds split into `units` work items.
inline int attention_team_size(int threads, int64_t units, double work) {
  if (work < static_cast<double>(attention_min_team_work().load(std::memory_order_relaxed)))
    return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(std::max(1, threads), units)));
}

// The GEMMs of a tile, C[m, n] = alpha * op(A) @ op(B) (+ C if accumulate), by the calling
// thread on the recurrent kernels' micro-kernel (common/step_gemm.h), which runs AVX-512 here
// where SciPy's OpenBLAS runs its AVX2 kernels. op(A) [m, k] is a (rows lda apart) or, if trans_a,
// a^T; op(B) [k, n] is b read in place (rows ldb apart) or, if trans_b, b^T, packed into `panels`
// [attention_panels_size] first.
template <typename T>
void tile_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc,
               T* panels) {
  const auto& kernel = step_gemm_kernels<T>();
  const PanelShare all = panel_share(n, kernel.panel_width, 0, 1);
  const PackedWeights<T> w = trans_b ? pack_weights(kernel, panels, b, 1, ldb, k, 1, n, all)
                                     : in_place_panels(kernel, b, ldb, k, n, panels, all);
  step_gemm(kernel, w, 0, 1, all, m, a, lda, c, ldc, accumulate, trans_a, alpha);
}

// The panels of a tile_gemm of tiles `t` with head sizes E and Ev: a packed tile of k^T or v^T
// (E or Ev rows, up to block_k columns), or the last panel of an operand read in place (up to
// block_q or block_k rows).
inline int64_t attention_panels_size(const AttentionTiles& t, int64_t E, int64_t Ev) {
  return round_block(std::max(packed_weights_size(std::max(E, Ev), 1, t.block_k),
                              tail_panel_size(std::max(t.block_q, t.block_k))));
}

// Backward splits the keys of each (batch item, kv head) into this many chunks when there are
// too few (batch item, kv head) pairs to keep every thread busy; chunk c > 0 sums its part of
// dq in a buffer of its own (deterministic, no atomics), added into dq at the end.
inline int64_t attention_backward_chunks(const AttentionShape& s, int64_t key_tiles) {
  const int64_t pairs = s.batch * s.heads_kv;
  const int64_t target = 4 * static_cast<int64_t>(s.threads);
  if (s.threads <= 1 || pairs == 0 || pairs >= target) return 1;
  return std::max<int64_t>(1, std::min(key_tiles, ceil_div(target, pairs)));
}

// The mask of one tile: element (bh, i0, j0).
template <typename T>
void set_tile_mask(AttentionTile<T>& t, const AttentionMask& mask, int64_t bh, int64_t i0,
                   int64_t j0) {
  t.mask_kind = static_cast<int>(mask.kind);
  if (mask.kind == MaskKind::none) {
    t.mask = nullptr;
    return;
  }
  const int64_t off = mask.offsets[bh] + i0 * mask.row_stride + j0 * mask.col_stride;
  t.mask = mask.kind == MaskKind::boolean
               ? static_cast<const void*>(static_cast<const uint8_t*>(mask.data) + off)
               : static_cast<const void*>(static_cast<const T*>(mask.data) + off);
  t.mask_row_stride = mask.row_stride;
  t.mask_col_stride = mask.col_stride;
}

// Which rows of the tile [i0, i0+rows) x [j0, j0+cols) the causal bound and the window cut
// (d: the alignment shift of its batch item, csrc/attention.h). A tile that no row's bound
// crosses keeps the flag off, and its rows run without the bound checks.
template <typename T>
void set_tile_bounds(AttentionTile<T>& t, const AttentionOptions& opt, int64_t d, int64_t i0,
                     int64_t rows, int64_t j0, int64_t cols) {
  // row r sees the columns c <= i0 + d + r - j0: the first row's bound inside the tile cuts it
  t.causal_offset = i0 + d - j0;
  t.causal = opt.causal && t.causal_offset < cols - 1;
  // and c >= i0 + d - window + 1 + r - j0: the last row's bound past column 0 cuts it
  t.window_offset = i0 + d - opt.window + 1 - j0;
  t.windowed = opt.window > 0 && t.window_offset + rows - 1 > 0;
}

// Dropout settings of every tile of a call.
template <typename T>
void set_tile_dropout(AttentionTile<T>& t, const AttentionOptions& opt, uint32_t* row_keys) {
  t.dropout = opt.dropout_p > 0;
  t.row_keys = row_keys;
  t.threshold = counter_threshold(opt.dropout_p);
  t.keep_scale = opt.dropout_p >= 1 ? T(0) : static_cast<T>(1.0 / (1.0 - opt.dropout_p));
}

// The keys of rows [first_row, first_row + rows) (row = bh*L + i).
inline void fill_row_keys(uint32_t* keys, uint64_t seed, int64_t first_row, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    keys[r] = counter_row_key(seed, static_cast<uint64_t>(first_row + r));
}

}  // namespace fusedrnn
