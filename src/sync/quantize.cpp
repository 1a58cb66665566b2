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

namespace {

// The host loops below apply quant_codec's steps in an order the compiler can vectorize: a block's
// codes go to a small buffer first (no read-modify-write of shared bytes), and fp4's nearest code
// counts against midpoints loaded once. Each value still goes through the same IEEE operations as
// the CUDA twin, so the bytes do not change (the tests compare both with hand-computed packets).
constexpr std::int64_t kChunk = 256;  // values encoded per pass: a block, or a slice of a long one

// The code of each scaled value of one chunk, for a blockwise format.
void encode_chunk(QuantFormat format, const float* __restrict x, std::int64_t count, float scale,
                  std::uint8_t* __restrict codes) {
  // codec::scaled, its test hoisted out of the loop: the values in units of the block's scale.
  float v[kChunk];
  if (scale > 0.0f && codec::is_finite(scale)) {
    for (std::int64_t i = 0; i < count; ++i) v[i] = codec::divide(x[i], scale);
  } else {
    std::fill(v, v + count, 0.0f);
  }
  if (format == QuantFormat::kInt8) {
    for (std::int64_t i = 0; i < count; ++i) codes[i] = codec::encode_int8(v[i]);
  } else if (format == QuantFormat::kInt4) {
    for (std::int64_t i = 0; i < count; ++i) codes[i] = codec::encode4(format, v[i]);
  } else {
    float mid[7];
    for (unsigned c = 0; c < 7; ++c) mid[c] = codec::fp4_midpoint(format, c);
    for (std::int64_t i = 0; i < count; ++i) {
      const float m = codec::magnitude(v[i]);
      // codec::nearest_fp4_code, unrolled: the number of midpoints below m.
      const int code = (m > mid[0]) + (m > mid[1]) + (m > mid[2]) + (m > mid[3]) + (m > mid[4]) +
                       (m > mid[5]) + (m > mid[6]);
      const int sign = code != 0 && v[i] < 0.0f ? 0x8 : 0x0;  // codec::encode4: zero is always code 0
      codes[i] = static_cast<std::uint8_t>(code | sign);
    }
  }
}

// The max over codec::amax_term(x[i]) (|x|, Inf for a NaN or Inf), taken on the bit patterns:
// for floats >= 0 their order is the order of the integers, and |x| of a NaN is above Inf's bits,
// so a clamp to Inf's bits stands for amax_term. An integer max vectorizes; a float one does not.
float block_amax(const float* __restrict x, std::int64_t count) {
  std::int32_t amax = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    const auto bits = static_cast<std::int32_t>(codec::bits_of(x[i]) & 0x7fffffffu);
    const std::int32_t term = bits < 0x7f800000 ? bits : 0x7f800000;
    amax = amax < term ? term : amax;
  }
  return codec::float_of(static_cast<std::uint32_t>(amax));
}

}  // namespace

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
  std::uint8_t codes[kChunk];
  for (std::int64_t begin = 0, b = 0; begin < n; begin += options.block, ++b) {
    const std::int64_t end = std::min(n, begin + options.block);
    const float scale = codec::block_scale(format, block_amax(x + begin, end - begin));
    codec::store_scale(scales + 4 * b, scale);
    // Chunks start at even indices (blocks are even), so a chunk's codes fill whole bytes but for
    // an odd n's last one, whose high nibble stays 0.
    for (std::int64_t at = begin; at < end; at += kChunk) {
      const std::int64_t count = std::min(kChunk, end - at);
      encode_chunk(format, x + at, count, scale, four_bit ? codes : payload + at);
      if (!four_bit) continue;
      std::uint8_t* bytes = payload + at / 2;
      for (std::int64_t j = 0; j < count / 2; ++j) {
        bytes[j] = static_cast<std::uint8_t>(codes[2 * j] | (codes[2 * j + 1] << 4));  // even index low
      }
      if (count % 2 != 0) bytes[count / 2] = codes[count - 1];
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
  // Every code's decoded value, looked up rather than recomputed per value.
  float decoded[256];
  for (unsigned code = 0; code < 256; ++code) {
    decoded[code] = four_bit ? codec::decode4(format, static_cast<std::uint8_t>(code & 0xfu))
                             : codec::decode_int8(static_cast<std::uint8_t>(code));
  }
  for (std::int64_t begin = 0, b = 0; begin < n; begin += options.block, ++b) {
    const std::int64_t end = std::min(n, begin + options.block);
    const float scale = codec::load_scale(scales + 4 * b);
    if (!codec::is_finite(scale)) {  // codec::dequantize_value passes a non-finite scale through
      std::fill(out + begin, out + end, scale);
      continue;
    }
    if (four_bit) {
      for (std::int64_t i = begin; i < end; ++i) {
        out[i] = codec::multiply(decoded[(packet[i / 2] >> (4 * (i % 2))) & 0xfu], scale);
      }
    } else {
      for (std::int64_t i = begin; i < end; ++i) out[i] = codec::multiply(decoded[packet[i]], scale);
    }
  }
}

}  // namespace edit::sync
