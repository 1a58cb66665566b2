#include "edit/sync/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "edit/core/check.h"

namespace edit::sync {
namespace {

bool blockwise(QuantFormat format) {
  return format == QuantFormat::kInt8 || format == QuantFormat::kInt4 || format == QuantFormat::kFp4E2M1 ||
         format == QuantFormat::kFp4E3M0;
}

bool four_bit(QuantFormat format) { return format != QuantFormat::kFp32 && format != QuantFormat::kBf16 && format != QuantFormat::kInt8; }

// Magnitudes of the 4-bit float codes 0..7 (the sign is bit 3).
constexpr float kE2M1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
constexpr float kE3M0[8] = {0.0f, 0.25f, 0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 16.0f};

// The largest magnitude a code represents: the block's max |x| maps onto it.
float code_max(QuantFormat format) {
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

// Nearest table entry to |v| (v already scaled into [0, max]); ties go to the lower magnitude.
std::uint8_t nearest_code(const float* table, float magnitude) {
  std::uint8_t best = 0;
  for (std::uint8_t c = 1; c < 8; ++c) {
    if (std::fabs(table[c] - magnitude) < std::fabs(table[best] - magnitude)) best = c;
  }
  return best;
}

// 4-bit code of the scaled value v (sign in bit 3 for the floats, two's-complement-free
// sign-magnitude for int4 as well, so -0 never appears: zero is code 0).
std::uint8_t encode4(QuantFormat format, float v) {
  const bool negative = v < 0.0f;
  const float magnitude = std::fabs(v);
  std::uint8_t code = 0;
  if (format == QuantFormat::kInt4) {
    code = static_cast<std::uint8_t>(std::min(7.0f, std::round(magnitude)));  // round: ties away from zero
  } else {
    code = nearest_code(format == QuantFormat::kFp4E2M1 ? kE2M1 : kE3M0, magnitude);
  }
  return code == 0 ? 0 : static_cast<std::uint8_t>(code | (negative ? 0x8 : 0x0));
}

float decode4(QuantFormat format, std::uint8_t code) {
  const float magnitude = format == QuantFormat::kInt4   ? static_cast<float>(code & 0x7)
                          : format == QuantFormat::kFp4E2M1 ? kE2M1[code & 0x7]
                                                            : kE3M0[code & 0x7];
  return (code & 0x8) ? -magnitude : magnitude;
}

std::uint16_t to_bf16(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // stays a (quiet) NaN
  bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest, ties to even
  return static_cast<std::uint16_t>(bits >> 16);
}

float from_bf16(std::uint16_t half) {
  const std::uint32_t bits = static_cast<std::uint32_t>(half) << 16;
  float x = 0.0f;
  std::memcpy(&x, &bits, 4);
  return x;
}

}  // namespace

QuantFormat parse_quant_format(const std::string& name) {
  if (name == "fp32") return QuantFormat::kFp32;
  if (name == "bf16") return QuantFormat::kBf16;
  if (name == "int8") return QuantFormat::kInt8;
  if (name == "int4") return QuantFormat::kInt4;
  if (name == "fp4" || name == "fp4e2m1") return QuantFormat::kFp4E2M1;
  if (name == "fp4e3m0") return QuantFormat::kFp4E3M0;
  EDIT_FAIL("unknown quantization '", name, "'; use fp32, bf16, int8, int4, fp4 (= fp4e2m1) or fp4e3m0");
}

const char* to_string(QuantFormat format) {
  switch (format) {
    case QuantFormat::kFp32:
      return "fp32";
    case QuantFormat::kBf16:
      return "bf16";
    case QuantFormat::kInt8:
      return "int8";
    case QuantFormat::kInt4:
      return "int4";
    case QuantFormat::kFp4E2M1:
      return "fp4e2m1";
    case QuantFormat::kFp4E3M0:
      return "fp4e3m0";
  }
  return "?";
}

void QuantOptions::validate() const {
  EDIT_CHECK(block >= 2 && block % 2 == 0, "quantization block of ", block,
             " values; use an even block size of at least 2 (e.g. 128)");
}

std::int64_t payload_bytes(std::int64_t n, const QuantOptions& options) {
  switch (options.format) {
    case QuantFormat::kFp32:
      return 4 * n;
    case QuantFormat::kBf16:
      return 2 * n;
    case QuantFormat::kInt8:
      return n;
    default:
      return (n + 1) / 2;
  }
}

std::int64_t scale_bytes(std::int64_t n, const QuantOptions& options) {
  if (!blockwise(options.format)) return 0;
  return 4 * ((n + options.block - 1) / options.block);
}

void quantize(const float* x, std::int64_t n, const QuantOptions& options, std::uint8_t* out) {
  options.validate();
  const QuantFormat format = options.format;
  if (format == QuantFormat::kFp32) {
    std::memcpy(out, x, static_cast<size_t>(4 * n));
    return;
  }
  if (format == QuantFormat::kBf16) {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint16_t h = to_bf16(x[i]);
      out[2 * i] = static_cast<std::uint8_t>(h & 0xff);
      out[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
    }
    return;
  }
  std::uint8_t* payload = out;
  std::uint8_t* scales = out + payload_bytes(n, options);
  if (four_bit(format)) std::memset(payload, 0, static_cast<size_t>(payload_bytes(n, options)));
  const float top = code_max(format);
  for (std::int64_t begin = 0, b = 0; begin < n; begin += options.block, ++b) {
    const std::int64_t end = std::min(n, begin + options.block);
    float amax = 0.0f;
    for (std::int64_t i = begin; i < end; ++i) {
      // A NaN or Inf makes the scale non-finite: the whole block decodes non-finite, so the
      // penalty on the receiving side still sees a broken worker.
      amax = std::isfinite(x[i]) ? std::max(amax, std::fabs(x[i])) : std::numeric_limits<float>::infinity();
    }
    const float scale = amax / top;
    std::memcpy(scales + 4 * b, &scale, 4);
    for (std::int64_t i = begin; i < end; ++i) {
      const float v = scale > 0.0f && std::isfinite(scale) ? x[i] / scale : 0.0f;
      if (format == QuantFormat::kInt8) {
        const float q = std::max(-127.0f, std::min(127.0f, std::round(v)));
        out[i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
      } else {
        payload[i / 2] |= static_cast<std::uint8_t>(encode4(format, v) << (4 * (i % 2)));
      }
    }
  }
}

void dequantize(const std::uint8_t* packet, std::int64_t n, const QuantOptions& options, float* out) {
  options.validate();
  const QuantFormat format = options.format;
  if (format == QuantFormat::kFp32) {
    std::memcpy(out, packet, static_cast<size_t>(4 * n));
    return;
  }
  if (format == QuantFormat::kBf16) {
    for (std::int64_t i = 0; i < n; ++i) {
      out[i] = from_bf16(static_cast<std::uint16_t>(packet[2 * i] | (packet[2 * i + 1] << 8)));
    }
    return;
  }
  const std::uint8_t* scales = packet + payload_bytes(n, options);
  for (std::int64_t begin = 0, b = 0; begin < n; begin += options.block, ++b) {
    const std::int64_t end = std::min(n, begin + options.block);
    float scale = 0.0f;
    std::memcpy(&scale, scales + 4 * b, 4);
    for (std::int64_t i = begin; i < end; ++i) {
      const float q = format == QuantFormat::kInt8
                          ? static_cast<float>(static_cast<std::int8_t>(packet[i]))
                          : decode4(format, static_cast<std::uint8_t>((packet[i / 2] >> (4 * (i % 2))) & 0xf));
      out[i] = std::isfinite(scale) ? q * scale : scale;
    }
  }
}

}  // namespace edit::sync
