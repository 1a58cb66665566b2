#include "edit/sync/quantize.h"

#include <algorithm>
#include <cstring>

#include "edit/core/check.h"
#include "quant_codec.h"

namespace edit::sync {

// Every per-value step lives in quant_codec.h, shared with the CUDA twin (kernels/quantize.cu).
namespace codec = quant_codec;

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
  if (!codec::blockwise(options.format)) return 0;
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
      const std::uint16_t h = codec::to_bf16(x[i]);
      out[2 * i] = static_cast<std::uint8_t>(h & 0xff);
      out[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
    }
    return;
  }
  std::uint8_t* payload = out;
  std::uint8_t* scales = out + payload_bytes(n, options);
  const bool four_bit = codec::four_bit(format);
  // The high nibble of an odd n's last byte stays 0.
  if (four_bit) std::memset(payload, 0, static_cast<size_t>(payload_bytes(n, options)));
  for (std::int64_t begin = 0, b = 0; begin < n; begin += options.block, ++b) {
    const std::int64_t end = std::min(n, begin + options.block);
    float amax = 0.0f;
    for (std::int64_t i = begin; i < end; ++i) amax = codec::max_of(amax, codec::amax_term(x[i]));
    const float scale = codec::block_scale(format, amax);
    codec::store_scale(scales + 4 * b, scale);
    for (std::int64_t i = begin; i < end; ++i) {
      const float v = codec::scaled(x[i], scale);
      if (four_bit) {
        // Two codes a byte, the even index in the low nibble.
        payload[i / 2] |= static_cast<std::uint8_t>(codec::encode4(format, v) << (4 * (i % 2)));
      } else {
        payload[i] = codec::encode_int8(v);
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
      out[i] = codec::from_bf16(static_cast<std::uint16_t>(packet[2 * i] | (packet[2 * i + 1] << 8)));
    }
    return;
  }
  const std::uint8_t* scales = packet + payload_bytes(n, options);
  const bool four_bit = codec::four_bit(format);
  for (std::int64_t begin = 0, b = 0; begin < n; begin += options.block, ++b) {
    const std::int64_t end = std::min(n, begin + options.block);
    const float scale = codec::load_scale(scales + 4 * b);
    for (std::int64_t i = begin; i < end; ++i) {
      const float q =
          four_bit ? codec::decode4(format, static_cast<std::uint8_t>((packet[i / 2] >> (4 * (i % 2))) & 0xf))
                   : codec::decode_int8(packet[i]);
      out[i] = codec::dequantize_value(q, scale);
    }
  }
}

}  // namespace edit::sync
