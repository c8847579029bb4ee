// The counter-based random draw of every dropout mask the kernels make (attention's dropout,
// the recurrent cells' zoneout and variational dropout): a decision is a hash of (seed, row,
// column), so backward redraws what forward drew and no mask is stored. The NumPy twin:
// fusedrnn/_counter_rng.py. Element (row, column) is kept iff
//   lowbias32(counter_row_key(seed, row) ^ (column * 0x9E3779B9)) >= counter_threshold(p)
// in uint32 arithmetic, so it is kept with probability 1 - p (to 2^-32).
#pragma once
#include <cstdint>

namespace fusedrnn {

// Chris Wellons' 32-bit integer hash.
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}
// The key of one row: every bit of the 64-bit seed and row enters.
inline uint32_t counter_row_key(uint64_t seed, uint64_t row) {
  const uint32_t a = lowbias32(static_cast<uint32_t>(row) ^ static_cast<uint32_t>(seed));
  return lowbias32(a ^ static_cast<uint32_t>(row >> 32) ^
                   lowbias32(static_cast<uint32_t>(seed >> 32)));
}
// p * 2^32 rounded, saturated: p = 0 keeps everything, p = 1 drops everything.
inline uint64_t counter_threshold(double p) {
  if (p <= 0) return 0;
  if (p >= 1) return 4294967296ULL;
  const double t = p * 4294967296.0 + 0.5;
  return t >= 4294967295.0 ? 4294967295ULL : static_cast<uint64_t>(t);
}
inline bool counter_keep(uint32_t row_key, int64_t column, uint64_t threshold) {
  const uint32_t spread = static_cast<uint32_t>(column) * 0x9E3779B9U;
  return lowbias32(row_key ^ spread) >= threshold;
}

}  // namespace fusedrnn
