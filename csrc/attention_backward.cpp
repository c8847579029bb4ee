// Scaled dot-product attention, backward: recompute p tile by tile from the saved lse.
#include <atomic>

#include "attention.h"
#include "common/attention_layout.h"
#include "common/carver.h"
#include "common/isa_table.h"
#include "common/threading.h"
#include "linear.h"

namespace fusedrnn {
namespace {
int64_t backward_member_size(const AttentionTiles& t, const AttentionShape& s) {
  // p, dP / dS, p*z (dropout), the soft-cap slope, dropout row keys, the GEMMs' panels
  return 4 * round_block(t.block_q * t.block_k) + round_block(t.block_q) +
         attention_panels_size(t, s.E, s.Ev);
}
}  // namespace

int64_t attention_backward_scratch_size(const AttentionShape& s, bool causal, int64_t window) {
  const AttentionTiles tiles = attention_backward_tiles(s, causal, window);
  const int64_t rows = s.batch * s.heads_q * s.L;
  const int64_t chunks = attention_backward_chunks(s, ceil_div(s.S, tiles.block_k));
  return round_block(rows) + (chunks - 1) * round_block(rows * s.E) +
         static_cast<int64_t>(std::max(1, s.threads)) * backward_member_size(tiles, s);
}

// d_out: [N,Hq,L,Ev]  q: [N,Hq,L,E]  k: [N,Hkv,S,E]  v: [N,Hkv,S,Ev]  out: [N,Hq,L,Ev]
// lse: [N,Hq,L]  dq: [N,Hq,L,E]  dk: [N,Hkv,S,E]  dv: [N,Hkv,S,Ev]  (all three =)
// scratch: delta [N*Hq*L], dq of chunks 1.. [(C-1), N*Hq*L*E], per thread the tiles.
// Work items: (batch item, kv head, chunk of key tiles) (the FlashAttention-2 split). An item
// owns dk and dv of its keys, and dq of its query heads (chunk 0) or a dq buffer (chunk > 0), so
// no two threads ever write one number.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, T* scratch, const T* d_out, const T* q, const T* k,
                        const T* v, const AttentionMask& mask, const T* out, const T* lse,
                        const AttentionShape& s, const AttentionOptions& opt) {
  const AttentionTiles tiles = attention_backward_tiles(s, opt.causal, opt.window);
  const int64_t BQ = tiles.block_q, BK = tiles.block_k;
  const int64_t L = s.L, S = s.S, E = s.E, Ev = s.Ev;
  const int64_t heads = s.batch * s.heads_q;
  const int64_t pairs = s.batch * s.heads_kv;
  const int64_t group = s.heads_q / s.heads_kv;
  const int64_t key_tiles = ceil_div(S, BK);
  const int64_t chunks = attention_backward_chunks(s, key_tiles);
  const int64_t units = pairs * chunks;
  const int64_t rows_total = heads * L;
  T* delta = scratch;
  T* dq_parts = delta + round_block(rows_total);
  T* tile_scratch = dq_parts + (chunks - 1) * round_block(rows_total * E);
  const T scale = static_cast<T>(opt.scale);
  const auto& kern = attention_kernels<T>();
  std::atomic<int64_t> next{0};
  // the multiply-adds of s, dp, dv, dq and dk, and the keys and values read
  const double work = attention_work(s, opt).weighted(3 * E + 2 * Ev, E + Ev);
  // one thread for small calls; units < threads still uses the team for the passes over rows
  run_team(
      attention_team_size(s.threads, std::max<int64_t>(units, s.threads), work),
      [&](int member, int members) {
        // 1. delta = rowsum(d_out * out); zero the gradients
        {
          const int64_t r0 = share_begin(rows_total, member, members);
          const int64_t r1 = share_begin(rows_total, member + 1, members);
          for (int64_t r = r0; r < r1; ++r) {
            const T* a = d_out + r * Ev;
            const T* b = out + r * Ev;
            T acc = 0;
            for (int64_t e = 0; e < Ev; ++e) acc += a[e] * b[e];
            delta[r] = acc;
          }
          auto zero_share = [&](T* p, int64_t n) {
            const int64_t a = share_begin(n, member, members),
                          b = share_begin(n, member + 1, members);
            std::fill(p + a, p + b, T(0));
          };
          zero_share(dq, rows_total * E);
          zero_share(dk, pairs * S * E);
          zero_share(dv, pairs * S * Ev);
          for (int64_t c = 1; c < chunks; ++c)
            zero_share(dq_parts + (c - 1) * round_block(rows_total * E), rows_total * E);
        }
        team_barrier();
        // 2. the items
        T* pbuf = tile_scratch + member * backward_member_size(tiles, s);
        T* dpbuf = pbuf + round_block(BQ * BK);
        T* pdrop = dpbuf + round_block(BQ * BK);
        T* slope = pdrop + round_block(BQ * BK);
        uint32_t* keys = reinterpret_cast<uint32_t*>(slope + round_block(BQ * BK));
        T* panels = slope + round_block(BQ * BK) + round_block(BQ);
        AttentionTile<T> t;
        t.s = pbuf;
        t.dp = dpbuf;
        t.ld = BK;
        set_tile_dropout(t, opt, keys);
        t.p_drop = t.dropout ? pdrop : pbuf;  // without dropout, dv uses p itself
        t.capped = opt.softcap > 0;
        t.softcap = static_cast<T>(opt.softcap);
        t.slope = slope;
        for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
          if (stop_requested()) break;
          const int64_t pair = u / chunks, chunk = u % chunks;
          const int64_t batch_item = pair / s.heads_kv, head_kv = pair % s.heads_kv;
          T* dq_target = chunk == 0 ? dq : dq_parts + (chunk - 1) * round_block(rows_total * E);
          const int64_t kt0 =
              share_begin(key_tiles, static_cast<int>(chunk), static_cast<int>(chunks));
          const int64_t kt1 =
              share_begin(key_tiles, static_cast<int>(chunk + 1), static_cast<int>(chunks));
          // the keys of this item, and its alignment shift (csrc/attention.h)
          const int64_t length = opt.key_lengths ? opt.key_lengths[batch_item] : S;
          const int64_t d = opt.bottom_right ? length - L : opt.query_offset;
          for (int64_t kt = kt0; kt < kt1; ++kt) {
            const int64_t j0 = kt * BK;
            if (j0 >= length) break;  // keys no query sees: their gradients stay zero
            const int64_t cols_all = std::min(BK, length - j0);
            // the query rows that see some of these keys: causal, i + d >= j0; window,
            // i + d - window + 1 <= the last key
            const int64_t first_row = opt.causal ? std::max<int64_t>(0, j0 - d) : 0;
            const int64_t last_row =
                opt.window > 0 ? std::min(L - 1, j0 + cols_all - 2 - d + opt.window) : L - 1;
            if (first_row > last_row) continue;
            const T* kj = k + (pair * S + j0) * E;
            const T* vj = v + (pair * S + j0) * Ev;
            T* dkj = dk + (pair * S + j0) * E;
            T* dvj = dv + (pair * S + j0) * Ev;
            for (int64_t g = 0; g < group; ++g) {
              const int64_t bh = batch_item * s.heads_q + head_kv * group + g;
              for (int64_t qt = first_row / BQ; qt <= last_row / BQ; ++qt) {
                if (stop_requested()) break;  // (the outputs are undefined then)
                const int64_t i0 = qt * BQ;
                const int64_t rows = std::min(BQ, L - i0);
                // causal: no key past the one the tile's last row sees
                const int64_t cols = opt.causal ? std::min(cols_all, i0 + rows + d - j0) : cols_all;
                const T* qi = q + (bh * L + i0) * E;
                const T* doi = d_out + (bh * L + i0) * Ev;
                T* dqi = dq_target + (bh * L + i0) * E;
                t.rows = rows;
                t.cols = cols;
                t.j0 = j0;
                set_tile_bounds(t, opt, d, i0, rows, j0, cols);
                t.lse = lse + bh * L + i0;
                t.delta = delta + bh * L + i0;
                set_tile_mask(t, mask, bh, i0, j0);
                if (t.dropout) fill_row_keys(keys, opt.seed, bh * L + i0, rows);
                // forward: s = scale * q_i k_j^T;  p = exp(s - lse)
                tile_gemm<T>(false, true, rows, cols, E, scale, qi, E, kj, E, false, pbuf, BK,
                             panels);
                kern.backward_probs(t);
                // forward: o = (p*z) v  ->  dv_j += (p*z)^T do_i,  dP*z = do_i v_j^T (z in ds)
                tile_gemm<T>(true, false, cols, Ev, rows, T(1), t.p_drop, BK, doi, Ev, true, dvj,
                             Ev, panels);
                tile_gemm<T>(false, true, rows, cols, Ev, T(1), doi, Ev, vj, Ev, false, dpbuf, BK,
                             panels);
                kern.backward_ds(t);
                // forward: s = scale * q k^T  ->  dq_i += scale dS k_j,  dk_j += scale dS^T q_i
                tile_gemm<T>(false, false, rows, E, cols, scale, dpbuf, BK, kj, E, true, dqi, E,
                             panels);
                tile_gemm<T>(true, false, cols, E, rows, scale, dpbuf, BK, qi, E, true, dkj, E,
                             panels);
              }
            }
          }
        }
        team_barrier();
        // 3. add the chunks' dq buffers into dq
        if (chunks > 1) {
          const int64_t n = rows_total * E;
          const int64_t a = share_begin(n, member, members),
                        b = share_begin(n, member + 1, members);
          for (int64_t c = 1; c < chunks; ++c) {
            const T* part = dq_parts + (c - 1) * round_block(n);
            for (int64_t i = a; i < b; ++i) dq[i] += part[i];
          }
        }
      });
}

namespace {
// The scratch of an additive backward, in order (a null base only counts).
template <typename T>
struct AdditiveBackwardScratch {
  T* de;       // [B,T,S]: dE
  T* dqp;      // [B,T,A]
  T* members;  // per thread, member_size apart: dkp [B,S,A], dw_v [A], and the panels of its tile
               // GEMMs (values^T packed, or the last panel of d_context read in place)
  int64_t member_size;
  int64_t dwv_offset, panels_offset;  // within a member's part
  T* linear;                          // the projections' gradients' panels
  int64_t size;
};

template <typename T>
AdditiveBackwardScratch<T> additive_backward_scratch(T* base, const AdditiveShape& s) {
  const int64_t B = s.batch, T_ = s.queries, S = s.keys, A = s.hidden;
  AdditiveBackwardScratch<T> b{};
  b.dwv_offset = round_block(B * S * A);
  b.panels_offset = b.dwv_offset + round_block(A);
  b.member_size = b.panels_offset + round_block(std::max(packed_weights_size(s.value_size, 1, S),
                                                         tail_panel_size(T_)));
  Carver<T> carve{base};
  b.de = carve.take(round_block(B * T_ * S));
  b.dqp = carve.take(round_block(B * T_ * A));
  b.members = carve.take(static_cast<int64_t>(std::max(1, s.threads)) * b.member_size);
  b.linear = carve.take(
      std::max(linear_backward_scratch_size(B * T_, A), linear_backward_scratch_size(B * S, A)));
  b.size = carve.used;
  return b;
}
}  // namespace

int64_t additive_attention_backward_scratch_size(const AdditiveShape& s) {
  return additive_backward_scratch<float>(nullptr, s).size;
}

// The arguments and their shapes: attention.h (AdditiveBackwardArgs).
template <typename T>
void additive_attention_backward(const AdditiveBackwardArgs<T>& a) {
  // masked keys have p = 0, hence dE = 0: backward skips them without the mask
  const int64_t B = a.shape.batch, T_ = a.shape.queries, S = a.shape.keys;
  const int64_t Dq = a.shape.query_size, Dk = a.shape.key_size, Dv = a.shape.value_size;
  const int64_t A = a.shape.hidden;
  const T *query = a.in.query, *keys = a.in.keys, *values = a.in.values;
  const T *w_q = a.in.w_q, *w_k = a.in.w_k, *w_v = a.in.w_v, *d_context = a.d_context;
  const T *weights = a.weights, *qp = a.qp, *kp = a.kp;
  T *d_values = a.d_values, *dw_v = a.dw_v;
  const AdditiveBackwardScratch<T> scratch = additive_backward_scratch(a.scratch, a.shape);
  const int64_t rows = B * T_;
  T* de = scratch.de;
  T* dqp = scratch.dqp;
  T* member_base = scratch.members;
  const int64_t member_size = scratch.member_size;
  const auto backward_row = attention_kernels<T>().additive_backward;
  const double work = static_cast<double>(rows) * S * (6 * A + 2 * Dv);
  const int team = attention_team_size(a.shape.threads, rows, work);
  run_team(team, [&](int member, int members) {
    T* dkp = member_base + member * member_size;
    T* dwv = dkp + scratch.dwv_offset;
    T* panels = dkp + scratch.panels_offset;
    // forward: context = p values  ->  d_values = p^T d_context, dP = d_context values^T
    for (int64_t b = share_begin(B, member, members); b < share_begin(B, member + 1, members);
         ++b) {
      tile_gemm<T>(true, false, S, Dv, T_, T(1), weights + b * T_ * S, S, d_context + b * T_ * Dv,
                   Dv, false, d_values + b * S * Dv, Dv, panels);
      tile_gemm<T>(false, true, T_, S, Dv, T(1), d_context + b * T_ * Dv, Dv, values + b * S * Dv,
                   Dv, false, de + b * T_ * S, S, panels);
    }
    team_barrier();  // dP of the rows below, formed item by item above
    const int64_t r0 = share_begin(rows, member, members),
                  r1 = share_begin(rows, member + 1, members);
    std::fill(dkp, dkp + B * S * A, T(0));
    std::fill(dwv, dwv + A, T(0));
    for (int64_t r = r0; r < r1; ++r) {
      // forward: p = softmax(e)  ->  dE = p * (dP - sum_s p dP)
      T* d = de + r * S;
      const T* p = weights + r * S;
      T dot = 0;
      for (int64_t j = 0; j < S; ++j) dot += p[j] * d[j];
      for (int64_t j = 0; j < S; ++j) d[j] = p[j] * (d[j] - dot);
      const int64_t b = r / T_;
      backward_row(S, A, dqp + r * A, dkp + b * S * A, dwv, d, qp + r * A, kp + b * S * A, w_v);
    }
    team_barrier();
    // the members' dkp summed into member 0's, and their dw_v into dw_v
    const int64_t n = B * S * A;
    const int64_t a = share_begin(n, member, members), z = share_begin(n, member + 1, members);
    for (int64_t m = 1; m < members; ++m) {
      const T* other = member_base + m * member_size;
      for (int64_t i = a; i < z; ++i) member_base[i] += other[i];
    }
    if (member == 0)
      for (int64_t m = 0; m < members; ++m) {
        const T* other = member_base + m * member_size + scratch.dwv_offset;
        for (int64_t j = 0; j < A; ++j) dw_v[j] += other[j];
      }
  });
  const T* dkp = member_base;
  // forward: qp = query w_q^T, kp = keys w_k^T (dense layers without bias)
  linear_backward<T>(a.d_query, a.dw_q, nullptr, scratch.linear, dqp, query, w_q, rows, Dq, A);
  linear_backward<T>(a.d_keys, a.dw_k, nullptr, scratch.linear, dkp, keys, w_k, B * S, Dk, A);
}

#define FUSEDRNN_ATTENTION_BACKWARD(T)                                                        \
  template void attention_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, \
                                      const AttentionMask&, const T*, const T*,               \
                                      const AttentionShape&, const AttentionOptions&);        \
  template void additive_attention_backward<T>(const AdditiveBackwardArgs<T>&);
FUSEDRNN_ATTENTION_BACKWARD(float)
FUSEDRNN_ATTENTION_BACKWARD(double)

}  // namespace fusedrnn
