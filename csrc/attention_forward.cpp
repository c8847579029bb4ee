// Scaled dot-product attention, forward: query tiles x key tiles with an online softmax.
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attention.h"
#include "attention_half.h"
#include "common/attention_layout.h"
#include "common/carver.h"
#include "common/isa_table.h"
#include "common/threading.h"
#include "linear.h"

namespace fusedrnn {
namespace {
std::atomic<int64_t> g_forced_block_q{0}, g_forced_block_k{0};

AttentionTiles forced_or(AttentionTiles tuned) {
  const int64_t bq = g_forced_block_q.load(std::memory_order_relaxed);
  const int64_t bk = g_forced_block_k.load(std::memory_order_relaxed);
  return bq > 0 && bk > 0 ? AttentionTiles{bq, bk} : tuned;
}

int64_t forward_member_size(const AttentionTiles& t, const AttentionShape& s, bool staged) {
  // score tile, running max m, running sum l, dropout row keys, the GEMMs' panels; 16-bit
  // inputs: float copies of a q tile, a k and a v tile, and the output tile
  const int64_t staging = staged ? round_block(t.block_q * s.E) + round_block(t.block_k * s.E) +
                                       round_block(t.block_k * s.Ev) + round_block(t.block_q * s.Ev)
                                 : 0;
  return round_block(t.block_q * t.block_k) + 3 * round_block(t.block_q) +
         attention_panels_size(t, s.E, s.Ev) + staging;
}
}  // namespace

std::atomic<int64_t>& attention_min_team_work() {
  static std::atomic<int64_t> work{1 << 22};
  return work;
}

void set_attention_tiles(int64_t block_q, int64_t block_k) {
  g_forced_block_q.store(block_q, std::memory_order_relaxed);
  g_forced_block_k.store(block_k, std::memory_order_relaxed);
}

// Measured on AVX-512 (Zen 5, 2 cores, float) at (B, H, L, E) = (8, 8, 256, 64) and (4, 8, 1024,
// 64), median ms of a call through the Python function (tiles block_q x block_k), with the tile
// GEMMs on the step kernel. Forward runs best with large tiles (fewer, larger GEMMs and fewer
// packings of each k tile): 256 x 512 (512 KiB of float scores, in L2) took 4.06 / 28.6 ms,
// 256 x 256 4.03 / 30.7, 128 x 256 4.31 / 31.1, 64 x 512 4.47 / 29.5. Under a causal mask a query
// tile wastes about block_q^2 / 2 masked scores on the diagonal, a fraction block_q / L of the
// work: 64 x 256 took 3.54 / 19.0 ms, 128 x 256 3.61 / 18.9, 128 x 512 3.66 / 18.0, 32 x 256
// 3.59 / 19.5. Backward, which keeps three tiles of scores per thread: 256 x 256 took 11.9 / 85 ms
// against 12.1 / 86 at 128 x 256 and 13.0 / 91 at 128 x 128; causal, 64 x 256 took 9.7 / 52
// against 10.1 / 51 at 128 x 256 and 10.7 / 53 at 128 x 128.
AttentionTiles attention_forward_tiles(const AttentionShape& s, bool causal) {
  (void)s;
  return forced_or(causal ? AttentionTiles{64, 256} : AttentionTiles{256, 512});
}

AttentionTiles attention_backward_tiles(const AttentionShape& s, bool causal, int64_t window) {
  (void)s;
  // A key tile is seen by the queries of its width plus the window: 256 keys would keep every
  // query of a 256-long sequence busy whatever the window. Narrower tiles skip the rest.
  if (window > 0 && window < 256)
    return forced_or(AttentionTiles{64, std::max<int64_t>(64, (window + 15) / 16 * 16)});
  return forced_or(causal ? AttentionTiles{64, 256} : AttentionTiles{256, 256});
}

int64_t attention_forward_scratch_size(const AttentionShape& s, bool causal, bool half) {
  return static_cast<int64_t>(std::max(1, s.threads)) *
         forward_member_size(attention_forward_tiles(s, causal), s, half);
}

namespace {
// The kernels compute in T; inputs of another type Src (16 bits) are converted a tile at a time.
template <typename T, typename Src>
const T* staged(const Src* src, int64_t n, T* buffer) {
  if constexpr (std::is_same_v<Src, T>) {
    (void)n;
    (void)buffer;
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = to_float(src[i]);
    return buffer;
  }
}
}  // namespace

// q: [N,Hq,L,E]  k: [N,Hkv,S,E]  v: [N,Hkv,S,Ev]  mask: broadcast [N,Hq,L,S] or none
// out: [N,Hq,L,Ev]  lse: [N,Hq,L]  scratch: [attention_forward_scratch_size]
// Work items: (batch item, head, query tile), handed out dynamically (the causal tiles differ in
// cost), the costliest query tiles of each head first. T is the type of the arithmetic, Src that
// of q, k, v and out (T itself, or 16 bits converted to and from T tile by tile).
template <typename T, typename Src>
void attention_forward_tiled(Src* out, T* lse, T* scratch, const Src* q, const Src* k, const Src* v,
                             const AttentionMask& mask, const AttentionShape& s,
                             const AttentionOptions& opt) {
  constexpr bool convert = !std::is_same_v<Src, T>;
  const AttentionTiles tiles = attention_forward_tiles(s, opt.causal);
  const int64_t BQ = tiles.block_q, BK = tiles.block_k;
  const int64_t L = s.L, S = s.S, E = s.E, Ev = s.Ev;
  const int64_t heads = s.batch * s.heads_q;
  const int64_t group = s.heads_q / s.heads_kv;
  const int64_t query_tiles = ceil_div(L, BQ);
  const int64_t units = heads * query_tiles;
  if (units == 0) return;
  const T scale = static_cast<T>(opt.scale);
  const T inf = std::numeric_limits<T>::infinity();
  const auto tile_kernel = attention_kernels<T>().forward_tile;
  const auto row_scores = attention_kernels<T>().row_scores;
  const auto row_values = attention_kernels<T>().row_values;
  std::atomic<int64_t> next{0};
  // the multiply-adds of q k^T and p v, and the keys and values read
  const double work = attention_work(s, opt).weighted(E + Ev, E + Ev);
  run_team(attention_team_size(s.threads, units, work), [&](int member, int) {
    T* sbuf = scratch + member * forward_member_size(tiles, s, convert);
    T* m = sbuf + round_block(BQ * BK);
    T* l = m + round_block(BQ);
    uint32_t* keys = reinterpret_cast<uint32_t*>(l + round_block(BQ));
    T* panels = l + 2 * round_block(BQ);
    T* q_stage = panels + attention_panels_size(tiles, E, Ev);
    T* k_stage = q_stage + round_block(BQ * E);
    T* v_stage = k_stage + round_block(BK * E);
    T* o_stage = v_stage + round_block(BK * Ev);
    AttentionTile<T> t;
    t.s = sbuf;
    t.ld = BK;
    t.m = m;
    t.l = l;
    t.ev = Ev;
    t.ldo = Ev;
    t.capped = opt.softcap > 0;
    t.softcap = static_cast<T>(opt.softcap);
    set_tile_dropout(t, opt, keys);
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      if (stop_requested()) break;
      const int64_t bh = u / query_tiles;
      const int64_t i0 = (query_tiles - 1 - u % query_tiles) * BQ;
      const int64_t rows = std::min(BQ, L - i0);
      const int64_t kv = (bh / s.heads_q) * s.heads_kv + (bh % s.heads_q) / group;
      const T* qi = staged<T>(q + (bh * L + i0) * E, rows * E, q_stage);
      const Src* kg = k + kv * S * E;
      const Src* vg = v + kv * S * Ev;
      T* oi;
      if constexpr (convert)
        oi = o_stage;
      else
        oi = out + (bh * L + i0) * Ev;
      std::fill(m, m + rows, -inf);
      std::fill(l, l + rows, T(0));
      std::fill(oi, oi + rows * Ev, T(0));
      if (t.dropout) fill_row_keys(keys, opt.seed, bh * L + i0, rows);
      t.rows = rows;
      t.o = oi;
      // the keys some row of the tile sees (tiles wholly before or after them are skipped)
      const KeyRange range = visible_keys(opt, L, S, bh / s.heads_q, i0, i0 + rows);
      for (int64_t j0 = range.begin; j0 < range.end; j0 += BK) {
        if (stop_requested()) break;  // (the outputs are undefined then)
        const int64_t cols = std::min(BK, range.end - j0);
        const T* kj = staged<T>(kg + j0 * E, cols * E, k_stage);
        const T* vj = staged<T>(vg + j0 * Ev, cols * Ev, v_stage);
        // s = scale * q_i k_j^T (one row, a decoding step: dot products, no packing)
        if (rows == 1)
          row_scores(cols, E, scale, qi, kj, E, sbuf);
        else
          tile_gemm<T>(false, true, rows, cols, E, scale, qi, E, kj, E, false, sbuf, BK, panels);
        t.cols = cols;
        t.j0 = j0;
        set_tile_bounds(t, opt, range.shift, i0, rows, j0, cols);
        set_tile_mask(t, mask, bh, i0, j0);
        tile_kernel(t);
        // o_i += (p*z) v_j   (o_i rescaled by the tile kernel when the row maximum grew)
        if (rows == 1)
          row_values(cols, Ev, sbuf, vj, Ev, oi);
        else
          tile_gemm<T>(false, false, rows, Ev, cols, T(1), sbuf, BK, vj, Ev, true, oi, Ev, panels);
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* orow = oi + r * Ev;
        if (l[r] == T(0)) {  // every key masked: zeros, and lse = +inf makes backward's p zero
          std::fill(orow, orow + Ev, T(0));
          lse[bh * L + i0 + r] = inf;
        } else {
          const T inv = T(1) / l[r];
          for (int64_t e = 0; e < Ev; ++e) orow[e] *= inv;
          lse[bh * L + i0 + r] = m[r] + std::log(l[r]);
        }
        if constexpr (convert) {
          Src* dst = out + (bh * L + i0 + r) * Ev;
          for (int64_t e = 0; e < Ev; ++e) dst[e] = from_float<Src>(orow[e]);
        }
      }
    }
  });
}

template <typename T>
void attention_forward(T* out, T* lse, T* scratch, const T* q, const T* k, const T* v,
                       const AttentionMask& mask, const AttentionShape& s,
                       const AttentionOptions& opt) {
  attention_forward_tiled<T, T>(out, lse, scratch, q, k, v, mask, s, opt);
}

template <typename Half>
void attention_forward_half(Half* out, float* lse, float* scratch, const Half* q, const Half* k,
                            const Half* v, const AttentionMask& mask, const AttentionShape& s,
                            const AttentionOptions& opt) {
  attention_forward_tiled<float, Half>(out, lse, scratch, q, k, v, mask, s, opt);
}
template void attention_forward_half<float16_bits>(float16_bits*, float*, float*,
                                                   const float16_bits*, const float16_bits*,
                                                   const float16_bits*, const AttentionMask&,
                                                   const AttentionShape&, const AttentionOptions&);
template void attention_forward_half<bfloat16_bits>(bfloat16_bits*, float*, float*,
                                                    const bfloat16_bits*, const bfloat16_bits*,
                                                    const bfloat16_bits*, const AttentionMask&,
                                                    const AttentionShape&, const AttentionOptions&);

namespace {
// The scratch of an additive forward, in order (a null base only counts).
template <typename T>
struct AdditiveForwardScratch {
  T* projections;         // the packed weights of the two projections, which run one by one
  T* panels;              // per thread: the last panel of the values read in place
  int64_t panels_stride;  // between two threads' panels
  int64_t size;
};

template <typename T>
AdditiveForwardScratch<T> additive_forward_scratch(T* base, const AdditiveShape& s) {
  const int64_t B = s.batch, A = s.hidden;
  Carver<T> carve{base};
  AdditiveForwardScratch<T> f{};
  f.projections =
      carve.take(round_block(std::max(linear_forward_scratch_size(B * s.queries, s.query_size, A),
                                      linear_forward_scratch_size(B * s.keys, s.key_size, A))));
  f.panels_stride = round_block(tail_panel_size(s.keys));
  f.panels = carve.take(static_cast<int64_t>(std::max(1, s.threads)) * f.panels_stride);
  f.size = carve.used;
  return f;
}
}  // namespace

int64_t additive_attention_forward_scratch_size(const AdditiveShape& s) {
  return additive_forward_scratch<float>(nullptr, s).size;
}

// The arguments and their shapes: attention.h (AdditiveForwardArgs).
template <typename T>
void additive_attention_forward(const AdditiveForwardArgs<T>& a) {
  const int64_t B = a.shape.batch, T_ = a.shape.queries, S = a.shape.keys;
  const int64_t Dq = a.shape.query_size, Dk = a.shape.key_size, Dv = a.shape.value_size;
  const int64_t A = a.shape.hidden;
  const T *query = a.in.query, *keys = a.in.keys, *values = a.in.values;
  const T *w_q = a.in.w_q, *w_k = a.in.w_k, *w_v = a.in.w_v;
  const uint8_t* key_mask = a.in.key_mask;
  T *context = a.context, *weights = a.weights, *qp = a.qp, *kp = a.kp;
  const AdditiveForwardScratch<T> scratch = additive_forward_scratch(a.scratch, a.shape);
  // qp = query w_q^T, kp = keys w_k^T: one GEMM each over the whole batch
  linear_forward<T>(qp, scratch.projections, query, w_q, nullptr, B * T_, Dq, A);
  linear_forward<T>(kp, scratch.projections, keys, w_k, nullptr, B * S, Dk, A);
  const auto scores = attention_kernels<T>().additive_scores;
  const int64_t rows = B * T_;
  // a tanh and a multiply-add per (query, key, hidden unit), plus context = p values
  const double work = static_cast<double>(rows) * S * (4 * A + Dv);
  run_team(attention_team_size(a.shape.threads, rows, work), [&](int member, int members) {
    const int64_t r0 = share_begin(rows, member, members),
                  r1 = share_begin(rows, member + 1, members);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T_;
      T* e = weights + r * S;
      scores(S, A, e, qp + r * A, kp + b * S * A, w_v, key_mask ? key_mask + b * S : nullptr);
      // p = softmax(e); every key masked: p = 0
      T mx = -std::numeric_limits<T>::infinity();
      // NaN wins, as in np.max: a NaN score makes the row NaN instead of looking fully masked
      for (int64_t j = 0; j < S; ++j) mx = (e[j] > mx || e[j] != e[j]) ? e[j] : mx;
      if (mx == -std::numeric_limits<T>::infinity()) {
        std::fill(e, e + S, T(0));
        continue;
      }
      T sum = 0;
      for (int64_t j = 0; j < S; ++j) sum += (e[j] = std::exp(e[j] - mx));
      const T inv = T(1) / sum;
      for (int64_t j = 0; j < S; ++j) e[j] *= inv;
    }
    // context = p values, for this member's items (whole items: a product's rows, and with them
    // its sums, must not depend on the team's split; p of an item's rows by other members first)
    team_barrier();
    T* panels = scratch.panels + member * scratch.panels_stride;
    for (int64_t b = share_begin(B, member, members); b < share_begin(B, member + 1, members); ++b)
      tile_gemm<T>(false, false, T_, Dv, S, T(1), weights + b * T_ * S, S, values + b * S * Dv, Dv,
                   false, context + b * T_ * Dv, Dv, panels);
  });
}

#define FUSEDRNN_ATTENTION_FORWARD(T)                                             \
  template void attention_forward<T>(T*, T*, T*, const T*, const T*, const T*,    \
                                     const AttentionMask&, const AttentionShape&, \
                                     const AttentionOptions&);                    \
  template void additive_attention_forward<T>(const AdditiveForwardArgs<T>&);
FUSEDRNN_ATTENTION_FORWARD(float)
FUSEDRNN_ATTENTION_FORWARD(double)

}  // namespace fusedrnn
