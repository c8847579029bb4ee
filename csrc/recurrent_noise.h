// Zoneout (Krueger et al. 2016) and variational recurrent dropout (Gal and Ghahramani 2016) of
// the LSTM and GRU kernels (recurrent_cell.h, RecurrentNoise; docs/layers.md). They run in the
// cells' options path, around its pointwise pass, on the slice of rows and units a team member
// owns; the default cells are untouched. The NumPy twin: fusedrnn/_recurrent_noise.py.
//
//   zoneout:   state_t = a*state_{t-1} + (1-a)*candidate_t   for h (both cells) and the LSTM's c;
//              training: a = 1 with probability p (the unit keeps its value), else 0, drawn per
//              (step, row, unit); eval: a = p, the expectation. The LSTM's candidate h is
//              o*h(c~) of the candidate c~ = f*c_{t-1} + i*g (the paper's equations).
//   dropout:   the recurrent GEMM reads h_{t-1} * keep / (1 - p), keep drawn once per (row,
//              unit): the same mask at every step of a sequence. Training only.
//
// The masks are counter-based (common/counter_rng.h), so backward redraws them from the seed.
// Slices: `rows` rows from row r0 and `w` units from unit j0 of [B,H] buffers (row stride H),
// their pointers already at (r0, j0).
#pragma once
#include <cstdint>
#include <utility>

#include "common/counter_rng.h"
#include "recurrent_cell.h"

namespace fusedrnn {

enum class NoiseMask : int { recurrent_dropout = 0, zoneout_h = 1, zoneout_c = 2 };

// The key of one row of a mask: each layer, direction and mask its own stream (seed); a row per
// (step of the sequence, row) for zoneout, one per row for the recurrent dropout (the same at
// every step). `step` counts from the call's first step (nz.first_step).
inline uint32_t noise_row_key(const RecurrentNoise& nz, NoiseMask mask, int64_t step, int64_t row) {
  const uint64_t id = nz.row_ids ? static_cast<uint64_t>(nz.row_ids[row]) : uint64_t(row);
  const uint64_t stream = static_cast<uint64_t>(nz.stream * 3 + int(mask) + 1);
  const uint64_t seed = nz.seed + stream * 0x9E3779B97F4A7C15ULL;
  const uint64_t absolute = static_cast<uint64_t>(nz.first_step + step);
  const bool per_step = mask != NoiseMask::recurrent_dropout;
  return counter_row_key(seed, per_step ? (absolute << 32) | id : id);
}

// a of every (row, unit) of the slice, through `use(k, a_is_one, a_is_zero, a)` with k the
// offset in the slice: sampling, a is 0 or 1; in eval, p.
template <typename F>
void for_each_zoneout(const RecurrentNoise& nz, NoiseMask mask, double p, int64_t step, int64_t r0,
                      int64_t rows, int64_t j0, int64_t w, int64_t H, F&& use) {
  const uint64_t threshold = counter_threshold(p);
  for (int64_t b = 0; b < rows; ++b) {
    const uint32_t key = nz.sample && p > 0 ? noise_row_key(nz, mask, step, r0 + b) : 0;
    for (int64_t j = 0; j < w; ++j) {
      const int64_t k = b * H + j;
      if (p <= 0)
        use(k, false, true, 0.0);
      else if (nz.sample) {
        const bool keeps_previous = !counter_keep(key, j0 + j, threshold);
        use(k, keeps_previous, !keeps_previous, keeps_previous ? 1.0 : 0.0);
      } else
        use(k, false, false, p);
    }
  }
}

// forward: state = a*prev + (1-a)*cand (state may be cand); prev null: zeros.
template <typename T>
void zoneout_states(const RecurrentNoise& nz, NoiseMask mask, double p, int64_t step, int64_t r0,
                    int64_t rows, int64_t j0, int64_t w, int64_t H, const T* prev, const T* cand,
                    T* state) {
  for_each_zoneout(nz, mask, p, step, r0, rows, j0, w, H,
                   [&](int64_t k, bool one, bool zero, double a) {
                     const T before = prev ? prev[k] : T(0);
                     state[k] = one ? before : zero ? cand[k] : T(a) * before + T(1 - a) * cand[k];
                   });
}

// forward: state = a*prev + (1-a)*cand  ->  d_cand = (1-a)*g, to_prev = a*g with g = grad
// (+ extra, or null). Each element is read before it is written: d_cand or to_prev may be grad.
template <typename T>
void zoneout_gradients(const RecurrentNoise& nz, NoiseMask mask, double p, int64_t step, int64_t r0,
                       int64_t rows, int64_t j0, int64_t w, int64_t H, const T* grad,
                       const T* extra, T* d_cand, T* to_prev) {
  for_each_zoneout(nz, mask, p, step, r0, rows, j0, w, H,
                   [&](int64_t k, bool one, bool zero, double a) {
                     const T g = extra ? grad[k] + extra[k] : grad[k];
                     d_cand[k] = one ? T(0) : zero ? g : T(1 - a) * g;
                     to_prev[k] = one ? g : zero ? T(0) : T(a) * g;
                   });
}

// The recurrent dropout's factors of rows [0, B), scale [B,H] = keep / (1 - p).
template <typename T>
void recurrent_dropout_scale(const RecurrentNoise& nz, int64_t B, int64_t H, T* scale) {
  const double p = nz.recurrent_dropout;
  const uint64_t threshold = counter_threshold(p);
  const T kept = T(1.0 / (1.0 - p));
  for (int64_t b = 0; b < B; ++b) {
    const uint32_t key = noise_row_key(nz, NoiseMask::recurrent_dropout, 0, b);
    for (int64_t j = 0; j < H; ++j)
      scale[b * H + j] = counter_keep(key, j, threshold) ? kept : T(0);
  }
}

// out = h * scale over `rows` rows of [B,H] (h null: zeros), for `steps` steps of B rows each.
template <typename T>
void drop_recurrent(T* out, const T* h, const T* scale, int64_t steps, int64_t B, int64_t H) {
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t k = 0; k < B * H; ++k) out[t * B * H + k] = h ? h[t * B * H + k] * scale[k] : T(0);
}

// The states the recurrent GEMM read, for dW_hh: (h0, y) as given, or with recurrent dropout
// their dropped copies in `buffer` [T+1,B,H] (h0 first, then the T steps of y). Without dW_hh
// wanted (`dw_hh` null: a frozen W_hh) nobody reads them, and nothing is copied.
template <typename T>
std::pair<const T*, const T*> recurrent_inputs(const RecurrentNoise& nz, const T* dw_hh,
                                               const T* h0, const T* y, const T* scale, T* buffer,
                                               int64_t steps, int64_t B, int64_t H) {
  if (!nz.dropout() || !dw_hh) return {h0, y};
  drop_recurrent(buffer, h0, scale, 1, B, H);
  drop_recurrent(buffer + B * H, y, scale, steps, B, H);
  return {buffer, buffer + B * H};
}

}  // namespace fusedrnn
