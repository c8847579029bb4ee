// Batched attention (the contract: docs/kernels.md, "Attention").
//
// Scaled dot-product attention, tiled with an online softmax (FlashAttention, Dao et al. 2022;
// the work split of FlashAttention-2). For each flattened batch item n and query head h, with
// kv head g = h / (Hq / Hkv) (grouped-query attention; g = h when Hq = Hkv):
//
//   s[i,j] = scale * q[n,h,i,:] . k[n,g,j,:]  (+ mask[n,h,i,j] if additive; -inf where a boolean
//            mask is false; -inf where causal and j > i: the top-left aligned causal mask)
//   p[i,:] = softmax(s[i,:])       out[n,h,i,:] = sum_j p[i,j] * z[i,j] * v[n,g,j,:]
//   lse[n,h,i] = log sum_j exp(s[i,j])
//
// z is the dropout factor: keep(n,h,i,j) / (1 - dropout_p), keep drawn by attention_dropout_keep
// below (counter-based, so backward redraws the same); z = 1 without dropout.
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
  int threads = 1;       // team size the scratch was sized for
};

struct AttentionOptions {
  double scale = 1.0;
  bool causal = false;
  double dropout_p = 0.0;  // in [0, 1]
  uint64_t seed = 0;
};

// Tile sizes: block_q query rows x block_k keys per score tile.
struct AttentionTiles {
  int64_t block_q, block_k;
};
AttentionTiles attention_forward_tiles(const AttentionShape& s, bool causal);
AttentionTiles attention_backward_tiles(const AttentionShape& s, bool causal);
// Testing knob: force tile sizes (0, 0 restores the tuned choice).
void set_attention_tiles(int64_t block_q, int64_t block_k);

int64_t attention_forward_scratch_size(const AttentionShape& s, bool causal);
int64_t attention_backward_scratch_size(const AttentionShape& s, bool causal);

template <typename T>
void attention_forward(T* out, T* lse, T* scratch, const T* q, const T* k, const T* v,
                       const AttentionMask& mask, const AttentionShape& s,
                       const AttentionOptions& opt);

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, T* scratch, const T* d_out, const T* q, const T* k,
                        const T* v, const AttentionMask& mask, const T* out, const T* lse,
                        const AttentionShape& s, const AttentionOptions& opt);

// ---- the dropout draw, written once (the NumPy twin: fusedrnn/reference/attention.py) ----
// Element (row, j) with row = (n*Hq + h)*L + i is kept iff
//   lowbias32(row_key(seed, row) ^ (j * 0x9E3779B9)) >= dropout_threshold(p)   (uint32 math)
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}
inline uint32_t attention_row_key(uint64_t seed, uint64_t row) {
  const uint32_t a = lowbias32(static_cast<uint32_t>(row) ^ static_cast<uint32_t>(seed));
  return lowbias32(a ^ static_cast<uint32_t>(row >> 32) ^
                   lowbias32(static_cast<uint32_t>(seed >> 32)));
}
// p * 2^32 rounded, saturated: p = 0 keeps everything, p = 1 drops everything (keep scale 0).
inline uint64_t attention_dropout_threshold(double p) {
  if (p <= 0) return 0;
  if (p >= 1) return 4294967296ULL;
  const double t = p * 4294967296.0 + 0.5;
  return t >= 4294967295.0 ? 4294967295ULL : static_cast<uint64_t>(t);
}

// ---- additive (Bahdanau) attention ----
//   e[b,t,s] = w_v . tanh(qp[b,t,:] + kp[b,s,:])   with qp = query @ w_q^T, kp = keys @ w_k^T
//   p[b,t,:] = softmax over s of e[b,t,s] (-inf where key_mask[b,s] is 0)
//   context[b,t,:] = sum_s p[b,t,s] * values[b,s,:]
// Shapes: query [B,T,Dq]  keys [B,S,Dk]  values [B,S,Dv]  w_q [A,Dq]  w_k [A,Dk]  w_v [A]
//   key_mask [B,S] bytes (null: every key)  context [B,T,Dv]  weights [B,T,S] (p, saved for
//   backward: small, no hidden-size factor)  qp [B,T,A], kp [B,S,A] (saved projections).
// The B*T*S*A tanh terms are never stored: backward recomputes them. A row with every key masked
// has context 0, weights 0 and zero gradients.
// Gradients: d_query, d_keys, d_values =; dw_q, dw_k, dw_v += (parameter gradients accumulate).
int64_t additive_attention_forward_scratch_size(int64_t B, int64_t T, int64_t S, int64_t Dq,
                                                int64_t Dk, int64_t A, int threads);
int64_t additive_attention_backward_scratch_size(int64_t B, int64_t T, int64_t S, int64_t A,
                                                 int64_t Dv, int threads);

template <typename T>
void additive_attention_forward(T* context, T* weights, T* qp, T* kp, T* scratch, const T* query,
                                const T* keys, const T* values, const T* w_q, const T* w_k,
                                const T* w_v, const uint8_t* key_mask, int64_t B, int64_t T_,
                                int64_t S, int64_t Dq, int64_t Dk, int64_t Dv, int64_t A,
                                int threads);

template <typename T>
void additive_attention_backward(T* d_query, T* d_keys, T* d_values, T* dw_q, T* dw_k, T* dw_v,
                                 T* scratch, const T* d_context, const T* query, const T* keys,
                                 const T* values, const T* w_q, const T* w_k, const T* w_v,
                                 const uint8_t* key_mask, const T* weights, const T* qp,
                                 const T* kp, int64_t B, int64_t T_, int64_t S, int64_t Dq,
                                 int64_t Dk, int64_t Dv, int64_t A, int threads);

}  // namespace fusedrnn
