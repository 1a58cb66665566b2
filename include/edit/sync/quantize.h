// Quantized pseudo-gradients for Streaming DiLoCo's exchange (docs/architecture.md, sync/).
//
// A packet of n floats is the payload followed by one fp32 scale per block of `block` values:
//   fp32   4 bytes a value, no scales (exact)
//   bf16   2 bytes, round to nearest even, no scales
//   int8   1 byte:  q = round(x / s) in [-127, 127], s = max|x| / 127 over the block
//   int4   4 bits:  q in [-7, 7], s = max|x| / 7; two values a byte, the first in the low nibble
//   fp4 e2m1  4 bits: sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6;
//             s = max|x| / 6
//   fp4 e3m0  4 bits: sign, 3 exponent bits, no mantissa: 0 and 2^(e-3) for e = 1..7, i.e.
//             0.25 .. 16; s = max|x| / 16
// Rounding goes to the nearest representable value (ties away from zero for the integer formats,
// to the lower magnitude for fp4), a pure function of the input: every rank that dequantizes the
// same packet gets the same floats, bit for bit. A block of zeros has scale 0 and decodes to zeros;
// a non-finite value makes its block's scale non-finite, so it still shows after the exchange.
//
// These are the CPU twins of edit::kernels::quantize_cuda / dequantize_cuda (edit/kernels/quantize.h):
// the same bytes and floats, bit for bit, from one shared per-value codec (src/sync/quant_codec.h).
#pragma once

#include <cstdint>
#include <string>

namespace edit::sync {

enum class QuantFormat { kFp32, kBf16, kInt8, kInt4, kFp4E2M1, kFp4E3M0 };

QuantFormat parse_quant_format(const std::string& name);  // fp32, bf16, int8, int4, fp4 (= fp4e2m1), fp4e3m0
const char* to_string(QuantFormat format);

struct QuantOptions {
  QuantFormat format = QuantFormat::kFp32;
  std::int64_t block = 128;  // values per scale (int8, int4, fp4); must be even and >= 2
  void validate() const;
};

// Bytes of the payload alone, of the scales alone, and of a whole packet of n values.
std::int64_t payload_bytes(std::int64_t n, const QuantOptions& options);
std::int64_t scale_bytes(std::int64_t n, const QuantOptions& options);
inline std::int64_t packet_bytes(std::int64_t n, const QuantOptions& options) {
  return payload_bytes(n, options) + scale_bytes(n, options);
}

// x[0, n) -> out[0, packet_bytes(n)).
void quantize(const float* x, std::int64_t n, const QuantOptions& options, std::uint8_t* out);
// packet -> out[0, n).
void dequantize(const std::uint8_t* packet, std::int64_t n, const QuantOptions& options, float* out);

}  // namespace edit::sync
