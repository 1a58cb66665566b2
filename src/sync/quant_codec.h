// The per-value steps of the quantized exchange (edit/sync/quantize.h): a block's scale, the code
// of one value, its decoded float, the bf16 conversion, the byte order of a scale. One source for
// the CPU (src/sync/quantize.cpp) and the CUDA twin (kernels/quantize.cu), so the two produce the
// same packet bytes and the same floats, bit for bit.
//
// Why the two sides cannot drift: every step is built from operations IEEE 754 defines exactly and
// both sides carry out the same way: bit manipulation, comparisons, floor, conversions of small
// integers, and single divisions, multiplications and subtractions, each rounded on its own (never
// contracted into a fused multiply-add: the device path spells them __fdiv_rn / __fmul_rn, which
// nvcc never fuses, and no step has the shape a * b + c on the host). The device must keep
// subnormals, as the CPU does: kernels/CMakeLists.txt compiles kernels/quantize.cu with -ftz=false
// (-ftz=true or --use_fast_math would turn div.rn.f32 into div.rn.ftz.f32).
//
// An internal header of src/sync (kernels/ reaches it through its include path); plain C++ when no
// CUDA compiler reads it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "edit/sync/quantize.h"

#ifdef __CUDACC__
#define EDIT_QUANT_HD __host__ __device__ __forceinline__
#else
#define EDIT_QUANT_HD inline
#endif

namespace edit::sync::quant_codec {

// --- Exact building blocks -----------------------------------------------------------------------

EDIT_QUANT_HD std::uint32_t bits_of(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, 4);
  return bits;
#endif
}

EDIT_QUANT_HD float float_of(std::uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float x = 0.0f;
  std::memcpy(&x, &bits, 4);
  return x;
#endif
}

// From the bits, so no library's classification or fabs can differ between host and device.
EDIT_QUANT_HD bool is_finite(float x) { return (bits_of(x) & 0x7f800000u) != 0x7f800000u; }
EDIT_QUANT_HD bool is_nan(float x) { return (bits_of(x) & 0x7fffffffu) > 0x7f800000u; }
EDIT_QUANT_HD float magnitude(float x) { return float_of(bits_of(x) & 0x7fffffffu); }
EDIT_QUANT_HD float infinity() { return float_of(0x7f800000u); }

// std::min / std::max's choice of operand (the first unless the second is strictly on the other side).
EDIT_QUANT_HD float min_of(float a, float b) { return b < a ? b : a; }
EDIT_QUANT_HD float max_of(float a, float b) { return a < b ? b : a; }

EDIT_QUANT_HD float divide(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);  // IEEE division: a reciprocal multiply would round differently
#else
  return a / b;
#endif
}

EDIT_QUANT_HD float multiply(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// floor(a) for a >= 0 (or NaN, returned as is). On the host, through a conversion to int32 and back
// rather than std::floor: exact (every float in [0, 2^23) truncates to its floor, and from 2^23 on a
// float is an integer already), and the compiler can vectorize it, which it cannot do with a call to
// the library's floor on a CPU without SSE4.1.
EDIT_QUANT_HD float floor_nonnegative(float a) {
#ifdef __CUDA_ARCH__
  return floorf(a);
#else
  return a < 8388608.0f ? static_cast<float>(static_cast<std::int32_t>(a)) : a;
#endif
}

// Round half away from zero (std::round), spelled with floor and one subtraction so no library
// rounding routine is involved: for a >= 0, a - floor(a) is exact (Sterbenz's lemma when
// floor(a) >= 1, trivially when it is 0), so the comparison with 0.5 decides the tie exactly and
// the result equals std::round for every float.
EDIT_QUANT_HD float round_half_away(float v) {
  const float a = magnitude(v);
  float r = floor_nonnegative(a);
  if (a - r >= 0.5f) r += 1.0f;
  return float_of(bits_of(r) | (bits_of(v) & 0x80000000u));  // v's sign, -0 included
}

// --- Blocks and scales ---------------------------------------------------------------------------

EDIT_QUANT_HD bool blockwise(QuantFormat format) {
  return format == QuantFormat::kInt8 || format == QuantFormat::kInt4 || format == QuantFormat::kFp4E2M1 ||
         format == QuantFormat::kFp4E3M0;
}

EDIT_QUANT_HD bool four_bit(QuantFormat format) {
  return format == QuantFormat::kInt4 || format == QuantFormat::kFp4E2M1 || format == QuantFormat::kFp4E3M0;
}

// The largest magnitude a code represents: the block's max |x| maps onto it.
EDIT_QUANT_HD float code_max(QuantFormat format) {
  switch (format) {
    case QuantFormat::kInt8:
      return 127.0f;
    case QuantFormat::kInt4:
      return 7.0f;
    case QuantFormat::kFp4E2M1:
      return 6.0f;
    case QuantFormat::kFp4E3M0:
      return 16.0f;
    default:
      return 1.0f;
  }
}

// One value's part in its block's max |x|. A NaN or Inf counts as Inf, so the scale turns
// non-finite and the whole block decodes non-finite: the penalty on the receiving side still sees
// a broken worker. max_of over these terms is exact and order-free (no NaN, no -0 among them), so
// a parallel reduction gives the sequential loop's result.
EDIT_QUANT_HD float amax_term(float x) { return is_finite(x) ? magnitude(x) : infinity(); }

// amax / max code, a true division: 0 for a block of zeros, Inf for a poisoned block.
EDIT_QUANT_HD float block_scale(QuantFormat format, float amax) { return divide(amax, code_max(format)); }

// x in units of the block's scale (0 when the scale is 0 or non-finite: nothing to encode).
EDIT_QUANT_HD float scaled(float x, float scale) {
  return scale > 0.0f && is_finite(scale) ? divide(x, scale) : 0.0f;
}

// --- Codes ---------------------------------------------------------------------------------------

EDIT_QUANT_HD std::uint8_t encode_int8(float v) {
  const float q = max_of(-127.0f, min_of(127.0f, round_half_away(v)));  // ties away from zero
  return static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
}

EDIT_QUANT_HD float decode_int8(std::uint8_t code) {
  return static_cast<float>(static_cast<std::int8_t>(code));
}

// Magnitudes of the 4-bit float codes 0..7 (the sign is bit 3), ascending:
//   e2m1: 0, 0.5, 1, 1.5, 2, 3, 4, 6          e3m0: 0, 0.25, 0.5, 1, 2, 4, 8, 16
// A switch rather than a table: a host constexpr array is out of reach of device code.
EDIT_QUANT_HD float fp4_magnitude(QuantFormat format, unsigned code) {
  if (format == QuantFormat::kFp4E2M1) {
    switch (code) {
      case 1:
        return 0.5f;
      case 2:
        return 1.0f;
      case 3:
        return 1.5f;
      case 4:
        return 2.0f;
      case 5:
        return 3.0f;
      case 6:
        return 4.0f;
      case 7:
        return 6.0f;
      default:
        return 0.0f;
    }
  }
  switch (code) {
    case 1:
      return 0.25f;
    case 2:
      return 0.5f;
    case 3:
      return 1.0f;
    case 4:
      return 2.0f;
    case 5:
      return 4.0f;
    case 6:
      return 8.0f;
    case 7:
      return 16.0f;
    default:
      return 0.0f;
  }
}

// Halfway between the magnitudes of codes c and c + 1 (c in 0..6): exact, as both are short dyadic
// numbers.
EDIT_QUANT_HD float fp4_midpoint(QuantFormat format, unsigned c) {
  return (fp4_magnitude(format, c) + fp4_magnitude(format, c + 1)) * 0.5f;
}

// The code whose magnitude is nearest to m >= 0, a tie going to the lower magnitude: the number of
// midpoints strictly below m. Exact comparisons against exact midpoints, so this is the true
// nearest, with no rounding of a distance involved. quantize.cpp's host loop counts against the
// same fp4_midpoint values.
EDIT_QUANT_HD unsigned nearest_fp4_code(QuantFormat format, float m) {
  unsigned code = 0;
  for (unsigned c = 0; c < 7; ++c) code += m > fp4_midpoint(format, c) ? 1u : 0u;
  return code;
}

// 4-bit code of the scaled value v: sign-magnitude with the sign in bit 3, for int4 as well, and
// zero is always code 0 (never -0).
EDIT_QUANT_HD std::uint8_t encode4(QuantFormat format, float v) {
  const bool negative = v < 0.0f;
  const float m = magnitude(v);
  const unsigned code = format == QuantFormat::kInt4 ? static_cast<unsigned>(min_of(7.0f, round_half_away(m)))
                                                     : nearest_fp4_code(format, m);
  return code == 0 ? std::uint8_t{0} : static_cast<std::uint8_t>(code | (negative ? 0x8u : 0x0u));
}

EDIT_QUANT_HD float decode4(QuantFormat format, std::uint8_t code) {
  const unsigned low = code & 0x7u;
  const float m = format == QuantFormat::kInt4 ? static_cast<float>(low) : fp4_magnitude(format, low);
  return (code & 0x8u) ? -m : m;
}

// A decoded code q times its block's scale; a non-finite scale passes through as the value.
EDIT_QUANT_HD float dequantize_value(float q, float scale) {
  return is_finite(scale) ? multiply(q, scale) : scale;
}

// --- bf16 ----------------------------------------------------------------------------------------

EDIT_QUANT_HD std::uint16_t to_bf16(float x) {
  std::uint32_t bits = bits_of(x);
  if (is_nan(x)) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);  // stays a (quiet) NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);                                   // round to nearest, ties to even
  return static_cast<std::uint16_t>(bits >> 16);
}

EDIT_QUANT_HD float from_bf16(std::uint16_t half) { return float_of(static_cast<std::uint32_t>(half) << 16); }

// --- Bytes of a scale in the packet: little-endian, byte by byte (the scales' offset in the packet
// need not be 4-byte aligned) ---------------------------------------------------------------------

EDIT_QUANT_HD void store_scale(std::uint8_t* at, float scale) {
  const std::uint32_t bits = bits_of(scale);
  at[0] = static_cast<std::uint8_t>(bits & 0xffu);
  at[1] = static_cast<std::uint8_t>((bits >> 8) & 0xffu);
  at[2] = static_cast<std::uint8_t>((bits >> 16) & 0xffu);
  at[3] = static_cast<std::uint8_t>(bits >> 24);
}

EDIT_QUANT_HD float load_scale(const std::uint8_t* at) {
  return float_of(static_cast<std::uint32_t>(at[0]) | (static_cast<std::uint32_t>(at[1]) << 8) |
                  (static_cast<std::uint32_t>(at[2]) << 16) | (static_cast<std::uint32_t>(at[3]) << 24));
}

}  // namespace edit::sync::quant_codec
