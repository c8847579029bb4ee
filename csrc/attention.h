// Batched attention (the contract: docs/kernels.md, "Attention").
//
// Scaled dot-product attention, tiled with an online softmax (FlashAttention, Dao et al. 2022;
// the work split of FlashAttention-2). For each flattened batch item n and query head h, with
// kv head g = h / (Hq / Hkv) (grouped-query attention; g = h when Hq = Hkv):
//
//   c[i,j] = scale * q[n,h,i,:] . k[n,g,j,:], soft-capped when softcap > 0:
//            c = softcap * tanh(c / softcap) (Gemma 2, ONNX Attention), before the mask
//   s[i,j] = c[i,j] (+ mask[n,h,i,j] if additive; -inf where a boolean mask is false; -inf
//            where key j is not visible to query i, below)
//   p[i,:] = softmax(s[i,:])       out[n,h,i,:] = sum_j p[i,j] * z[i,j] * v[n,g,j,:]
//   lse[n,h,i] = log sum_j exp(s[i,j])
//
// Visibility (no L x S matrix: whole tiles outside it are skipped). With S_n = key_lengths[n]
// (or S) and the alignment shift d = query_offset (0: top-left, torch's is_causal; the length
// of a cache before the new keys: ONNX's past_key) or S_n - L (bottom-right, ONNX's with
// nonpad_kv_seqlen, the queries being the last L of S_n positions), key j is visible to
// query i iff  j < S_n,  and if causal: j <= i + d,  and if window w > 0: i + d - j < w (the
// window bounds the keys from below: with causal, Mistral's and Gemma's sliding window; without,
// ONNX's left_window_size = w - 1 with later keys all visible).
// z is the dropout factor: keep(n,h,i,j) / (1 - dropout_p), keep drawn by counter_keep
// (common/counter_rng.h; counter-based, so backward redraws the same); z = 1 without dropout.
// A row whose keys are all masked (every s[i,j] = -inf, or S = 0) has out = 0, lse = +inf and
// zero gradients: p = exp(s - lse) = 0 then, in forward and in backward.
//
// Shapes (C order; N batch items, Hq query heads, Hkv kv heads dividing Hq, L queries, S keys,
// E query/key features, Ev value features):
//   q [N,Hq,L,E]  k [N,Hkv,S,E]  v [N,Hkv,S,Ev]  out [N,Hq,L,Ev]  lse [N,Hq,L]
//   d_out [N,Hq,L,Ev]  dq [N,Hq,L,E]  dk [N,Hkv,S,E]  dv [N,Hkv,S,Ev]
//   mask: see AttentionMask (any broadcast of [N,Hq,L,S] without copying it)
// Only out and lse are saved for backward (O(N*Hq*L*(Ev+1)), never the L x S probabilities);
// backward recomputes the probabilities tile by tile from lse.
// The caller owns all memory; scratch need not survive a call (its size depends on `threads`).
// Accumulation: dq, dk, dv are activation gradients, overwritten (=), never accumulated into;
// under GQA dk, dv hold the sum over the Hq/Hkv query heads that share a kv head.
#pragma once
#include <cstdint>

#include "common/counter_rng.h"

namespace fusedrnn {

enum class MaskKind : int { none = 0, boolean = 1, additive = 2 };

// A mask broadcast to [N,Hq,L,S] by strides: element (n,h,i,j) is at
//   data + offsets[n*Hq + h] + i*row_stride + j*col_stride      (in elements)
// boolean: bytes, nonzero = may attend; additive: of the kernel's type T, added to s.
// col_stride is 0 or 1; row_stride and offsets are >= 0 (the binding checks the bounds).
struct AttentionMask {
  MaskKind kind = MaskKind::none;
  const void* data = nullptr;
  const int64_t* offsets = nullptr;  // [N*Hq]
  int64_t row_stride = 0;
  int64_t col_stride = 0;
};

struct AttentionShape {
  int64_t batch = 0;     // N
  int64_t heads_q = 0;   // Hq
  int64_t heads_kv = 0;  // Hkv, divides Hq
  int64_t L = 0, S = 0, E = 0, Ev = 0;
  int threads = 1;  // team size the scratch was sized for
};

struct AttentionOptions {
  double scale = 1.0;
  bool causal = false;
  double dropout_p = 0.0;  // in [0, 1]
  uint64_t seed = 0;
  bool bottom_right = false;             // alignment: d = S_n - L instead of query_offset
  int64_t query_offset = 0;              // d without bottom_right: query i at key position i+d
  int64_t window = 0;                    // > 0: sliding window; 0: none
  double softcap = 0.0;                  // > 0: c = softcap * tanh(c / softcap); 0: none
  const int64_t* key_lengths = nullptr;  // [N], each in [0, S], or null: S for every item
};

// The keys [begin, end) that query rows [i0, i1) of batch item n may see, as a whole (each row
// sees a sub-range: AttentionTile's row bounds), and the alignment shift d of that item.
struct KeyRange {
  int64_t begin, end, shift;
};
inline KeyRange visible_keys(const AttentionOptions& o, int64_t L, int64_t S, int64_t n, int64_t i0,
                             int64_t i1) {
  const int64_t len = o.key_lengths ? o.key_lengths[n] : S;
  const int64_t d = o.bottom_right ? len - L : o.query_offset;
  int64_t begin = 0, end = len;
  if (o.causal) end = end < i1 + d ? end : i1 + d;  // the last row sees j <= i1 - 1 + d
  if (o.window > 0) begin = i0 + d - o.window + 1 > 0 ? i0 + d - o.window + 1 : 0;
  return {begin, end > begin ? end : begin, d};
}

// Tile sizes: block_q query rows x block_k keys per score tile.
struct AttentionTiles {
  int64_t block_q, block_k;
};
AttentionTiles attention_forward_tiles(const AttentionShape& s, bool causal);
// window > 0: key tiles about as wide as the window, so that a key tile's queries are few
AttentionTiles attention_backward_tiles(const AttentionShape& s, bool causal, int64_t window = 0);
// Testing knob: force tile sizes (0, 0 restores the tuned choice).
void set_attention_tiles(int64_t block_q, int64_t block_k);

// half: for attention_forward_half (room for the float copies of the 16-bit tiles)
int64_t attention_forward_scratch_size(const AttentionShape& s, bool causal, bool half = false);
int64_t attention_backward_scratch_size(const AttentionShape& s, bool causal, int64_t window = 0);

template <typename T>
void attention_forward(T* out, T* lse, T* scratch, const T* q, const T* k, const T* v,
                       const AttentionMask& mask, const AttentionShape& s,
                       const AttentionOptions& opt);

// q, k, v and out of 16 bits (float16_bits / bfloat16_bits, csrc/attention_half.h), converted
// tile by tile; the arithmetic, lse and scratch in float.
template <typename Half>
void attention_forward_half(Half* out, float* lse, float* scratch, const Half* q, const Half* k,
                            const Half* v, const AttentionMask& mask, const AttentionShape& s,
                            const AttentionOptions& opt);

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, T* scratch, const T* d_out, const T* q, const T* k,
                        const T* v, const AttentionMask& mask, const T* out, const T* lse,
                        const AttentionShape& s, const AttentionOptions& opt);

// ---- the dropout draw: common/counter_rng.h (the NumPy twin: fusedrnn/_counter_rng.py) ----
// Element (row, j) with row = (n*Hq + h)*L + i is kept iff counter_keep(counter_row_key(seed, row),
// j, counter_threshold(p)).

// ---- additive (Bahdanau) attention ----
//   e[b,t,s] = w_v . tanh(qp[b,t,:] + kp[b,s,:])   with qp = query @ w_q^T, kp = keys @ w_k^T
//   p[b,t,:] = softmax over s of e[b,t,s] (-inf where key_mask[b,s] is 0)
//   context[b,t,:] = sum_s p[b,t,s] * values[b,s,:]
// The arguments and their shapes: AdditiveForwardArgs / AdditiveBackwardArgs below. weights (p)
// is saved for backward (small, no hidden-size factor), and so are the projections qp and kp.
// The B*T*S*A tanh terms are never stored: backward recomputes them. A row with every key masked
// has context 0, weights 0 and zero gradients.
// Gradients: d_query, d_keys, d_values =; dw_q, dw_k, dw_v += (parameter gradients accumulate).
struct AdditiveShape {
  int64_t batch = 0;       // B
  int64_t queries = 0;     // T
  int64_t keys = 0;        // S
  int64_t query_size = 0;  // Dq
  int64_t key_size = 0;    // Dk
  int64_t value_size = 0;  // Dv
  int64_t hidden = 0;      // A
  int threads = 1;         // team size the scratch was sized for
};

// The inputs the forward and the backward both read.
template <typename T>
struct AdditiveInputs {
  const T* query = nullptr;           // [B,T,Dq]
  const T* keys = nullptr;            // [B,S,Dk]
  const T* values = nullptr;          // [B,S,Dv]
  const T* w_q = nullptr;             // [A,Dq]
  const T* w_k = nullptr;             // [A,Dk]
  const T* w_v = nullptr;             // [A]
  const uint8_t* key_mask = nullptr;  // [B,S] or null: every key
};

template <typename T>
struct AdditiveForwardArgs {
  // outputs
  T* context = nullptr;  // [B,T,Dv]
  T* weights = nullptr;  // [B,T,S]: p, saved for backward
  T* qp = nullptr;       // [B,T,A]: saved for backward
  T* kp = nullptr;       // [B,S,A]: saved for backward
  // inputs
  AdditiveInputs<T> in;
  // scratch
  T* scratch = nullptr;  // [additive_attention_forward_scratch_size]
  // sizes
  AdditiveShape shape;
};

template <typename T>
struct AdditiveBackwardArgs {
  // outputs
  T* d_query = nullptr;   // [B,T,Dq] (=)
  T* d_keys = nullptr;    // [B,S,Dk] (=)
  T* d_values = nullptr;  // [B,S,Dv] (=)
  T* dw_q = nullptr;      // [A,Dq] (+=)
  T* dw_k = nullptr;      // [A,Dk] (+=)
  T* dw_v = nullptr;      // [A] (+=)
  // inputs
  const T* d_context = nullptr;  // [B,T,Dv]
  AdditiveInputs<T> in;          // as given to the forward
  // saved and scratch
  const T* weights = nullptr;  // [B,T,S]: as the forward saved them
  const T* qp = nullptr;       // [B,T,A]
  const T* kp = nullptr;       // [B,S,A]
  T* scratch = nullptr;        // [additive_attention_backward_scratch_size]
  // sizes
  AdditiveShape shape;
};

int64_t additive_attention_forward_scratch_size(const AdditiveShape& s);
int64_t additive_attention_backward_scratch_size(const AdditiveShape& s);

template <typename T>
void additive_attention_forward(const AdditiveForwardArgs<T>& a);

template <typename T>
void additive_attention_backward(const AdditiveBackwardArgs<T>& a);

}  // namespace fusedrnn
