// Pieces every recurrent cell's sequence driver shares (one place for each formula).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/blas.h"

namespace fusedrnn {

// dst[n] = src[n], or zeros when src is null (an absent gradient means zeros).
template <typename T>
void copy_or_zero(T* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  if (src)
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  else
    std::fill(dst, dst + n, T(0));
}

// out[j] = a[j] + b[j]: the two biases of a gate that enter only as a sum.
template <typename T>
void add_vectors(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = a[j] + b[j];
}

// out[j] += sum over rows of a[r, j], a with row stride lda: bias gradients.
template <typename T>
void add_column_sums(T* out, const T* a, int64_t rows, int64_t cols, int64_t lda) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = a + r * lda;
    for (int64_t j = 0; j < cols; ++j) out[j] += row[j];
  }
}

// The gradient of the recurrent weights over all steps, as two GEMMs after the time loop:
//   dw[G,H] += sum_t dgates[t]^T @ h_{t-1},  h_{t-1} = y[t-1] for t >= 1 and h0 for t = 0,
// where dgates is [T*B, G] with row stride ldg, y [T,B,H], h0 [B,H] and dw has row stride ldw.
template <typename T>
void add_recurrent_weight_grad(T* dw, int64_t ldw, const T* dgates, int64_t ldg, int64_t G,
                               const T* y, const T* h0, int64_t steps, int64_t B, int64_t H) {
  if (steps == 0) return;
  gemm<T>(true, false, G, H, B, T(1), dgates, ldg, h0, H, T(1), dw, ldw);
  gemm<T>(true, false, G, H, (steps - 1) * B, T(1), dgates + B * ldg, ldg, y, H, T(1), dw, ldw);
}

// The steps whose input projection an inference forward computes at once: enough rows for an
// efficient GEMM, without keeping the projection of a whole long sequence.
inline int64_t projection_chunk_steps(int64_t steps, int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(steps, std::max<int64_t>(8, 256 / std::max<int64_t>(B, 1))));
}

}  // namespace fusedrnn
