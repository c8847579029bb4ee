// 16-bit attention inputs (float16 and bfloat16): their bits, and the exact conversions to float
// and the round-to-nearest-even conversions back, written once (portable scalar code: the
// forward converts a tile of q, k and v at a time, which costs little next to its GEMMs).
#pragma once
#include <cstdint>
#include <cstring>

namespace fusedrnn {

struct float16_bits {
  uint16_t bits;
};
struct bfloat16_bits {
  uint16_t bits;
};

inline float bits_to_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  return x;
}

inline float to_float(bfloat16_bits h) {
  return bits_to_float(static_cast<uint32_t>(h.bits) << 16);
}

inline float to_float(float16_bits h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  const float subnormal = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // * 2^-24
  return sign ? -subnormal : subnormal;
}

template <typename Half>
Half from_float(float f);

template <>
inline bfloat16_bits from_float<bfloat16_bits>(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // NaN
  return {static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

template <>
inline float16_bits from_float<float16_bits>(float f) {
  uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu))};
  if (x >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  if (x >= 0x38800000u) {  // a normal half: rebias the exponent, round 23 -> 10 mantissa bits
    const uint32_t rounded = x + 0xfffu + ((x >> 13) & 1u);
    return {static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
  }
  if (x < 0x33000000u) return {sign};  // below 2^-25 (2^-25 itself ties to the even 0)
  // a subnormal half: units of 2^-24, from the 24-bit mantissa with its implicit one
  const uint32_t exponent = x >> 23, mantissa = (x & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // 14..24
  uint32_t units = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (units & 1u))) ++units;
  return {static_cast<uint16_t>(sign | units)};
}

}  // namespace fusedrnn
