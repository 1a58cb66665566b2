// Quantized pseudo-gradients (edit/sync/quantize.h) against hand-computed packets and a
// brute-force reference: the dequantized value must be the representable value nearest to x.
#include "edit/sync/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

using edit::sync::dequantize;
using edit::sync::packet_bytes;
using edit::sync::QuantFormat;
using edit::sync::quantize;
using edit::sync::QuantOptions;

std::vector<float> round_trip(const std::vector<float>& x, QuantFormat format, std::int64_t block) {
  const QuantOptions options{format, block};
  std::vector<std::uint8_t> packet(
      static_cast<size_t>(packet_bytes(static_cast<std::int64_t>(x.size()), options)));
  quantize(x.data(), static_cast<std::int64_t>(x.size()), options, packet.data());
  std::vector<float> out(x.size());
  dequantize(packet.data(), static_cast<std::int64_t>(x.size()), options, out.data());
  return out;
}

TEST(Quantize, HandComputedPackets) {
  // int8, one block: scale 1/127; -0.5 -> -63.5 rounds away from zero to -64; 0.25 -> 31.75 -> 32.
  EXPECT_EQ(round_trip({1.0f, -0.5f, 0.25f, 0.0f}, QuantFormat::kInt8, 4),
            (std::vector<float>{127 * (1.0f / 127), -64 * (1.0f / 127), 32 * (1.0f / 127), 0.0f}));
  // int4, blocks of 2: scale 3.5/7 = 0.5, codes 7 and -2: exact.
  EXPECT_EQ(round_trip({3.5f, -1.0f}, QuantFormat::kInt4, 2), (std::vector<float>{3.5f, -1.0f}));
  // fp4 e2m1, scale 6/6 = 1: 2.9 -> 3; 0.26 -> 0.5 (0.24 away, 0 is 0.26); 0.75 is halfway
  // between 0.5 and 1: the lower magnitude.
  EXPECT_EQ(round_trip({6.0f, 2.9f, -0.26f, 0.75f}, QuantFormat::kFp4E2M1, 4),
            (std::vector<float>{6.0f, 3.0f, -0.5f, 0.5f}));
  // fp4 e3m0, scale 1: 3 is halfway between 2 and 4 -> 2. Then scale 8/16: -0.3 / 0.5 = -0.6 ->
  // -0.5 -> -0.25; 8 -> 16 -> 8.
  EXPECT_EQ(round_trip({16.0f, 3.0f, -0.3f, 8.0f}, QuantFormat::kFp4E3M0, 2),
            (std::vector<float>{16.0f, 2.0f, -0.25f, 8.0f}));
  // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1); 1 + 3 * 2^-9 -> 1 + 2^-7.
  EXPECT_EQ(round_trip({1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -9), -2.5f},
                       QuantFormat::kBf16, 2),
            (std::vector<float>{1.0f, 1.0f + std::ldexp(1.0f, -7), -2.5f}));
  // A block of zeros has scale 0 and decodes to zeros.
  EXPECT_EQ(round_trip({0.0f, 0.0f, 0.0f}, QuantFormat::kInt4, 2), (std::vector<float>{0.0f, 0.0f, 0.0f}));
}

TEST(Quantize, PacketSizesAndScaleOverhead) {
  // 1000 values in blocks of 128: 8 scales of 4 bytes.
  EXPECT_EQ(packet_bytes(1000, {QuantFormat::kFp32, 128}), 4000);
  EXPECT_EQ(packet_bytes(1000, {QuantFormat::kBf16, 128}), 2000);
  EXPECT_EQ(packet_bytes(1000, {QuantFormat::kInt8, 128}), 1000 + 32);
  EXPECT_EQ(packet_bytes(1000, {QuantFormat::kFp4E2M1, 128}), 500 + 32);
  EXPECT_EQ(packet_bytes(1001, {QuantFormat::kInt4, 128}), 501 + 32);
  EXPECT_EQ(edit::sync::scale_bytes(1000, {QuantFormat::kFp4E3M0, 64}), 4 * 16);
  EXPECT_EQ(edit::sync::parse_quant_format("fp4"), QuantFormat::kFp4E2M1);
  EXPECT_THROW(edit::sync::parse_quant_format("fp3"), std::exception);
  EXPECT_THROW(QuantOptions({QuantFormat::kInt8, 3}).validate(), std::exception);
}

// Values on the grid (a code times a power-of-two scale, the block's max on the top code) come
// back exactly.
TEST(Quantize, RepresentableValuesRoundTripExactly) {
  std::mt19937 rng(7);
  const std::vector<std::pair<QuantFormat, std::vector<float>>> grids = {
      {QuantFormat::kInt8, {}},
      {QuantFormat::kInt4, {0, 1, 2, 3, 4, 5, 6, 7}},
      {QuantFormat::kFp4E2M1, {0, 0.5f, 1, 1.5f, 2, 3, 4, 6}},
      {QuantFormat::kFp4E3M0, {0, 0.25f, 0.5f, 1, 2, 4, 8, 16}}};
  for (const auto& [format, magnitudes] : grids) {
    std::vector<float> grid = magnitudes;
    if (grid.empty()) {
      for (int q = 0; q <= 127; ++q) grid.push_back(static_cast<float>(q));
    }
    const float scale = 0.125f;  // a power of two: code x scale is exact
    std::vector<float> x(64);
    for (size_t i = 0; i < x.size(); ++i) {
      const float magnitude = grid[rng() % grid.size()];
      x[i] = (rng() % 2 ? -1.0f : 1.0f) * magnitude * scale;
    }
    for (size_t b = 0; b < x.size(); b += 16) x[b] = grid.back() * scale;  // every block reaches the top code
    EXPECT_EQ(round_trip(x, format, 16), x) << edit::sync::to_string(format);
  }
}

// Any value comes back as the representable value nearest to it (a brute-force search over the
// block's grid), so the error is at most half a grid step. Blocks of 32, and of 1000 (longer than
// the 256 values the encoder takes at a time), over an odd count: a short odd last block.
TEST(Quantize, ArbitraryValuesGoToTheNearestRepresentable) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (QuantFormat format :
       {QuantFormat::kInt8, QuantFormat::kInt4, QuantFormat::kFp4E2M1, QuantFormat::kFp4E3M0}) {
    for (const std::int64_t block : {32, 1000}) {
      std::vector<float> x(2999);
      for (float& v : x) v = normal(rng) * 1e-3f;
      const std::vector<float> y = round_trip(x, format, block);
      std::vector<float> magnitudes;
      if (format == QuantFormat::kInt8) {
        for (int q = 0; q <= 127; ++q) magnitudes.push_back(static_cast<float>(q));
      } else if (format == QuantFormat::kInt4) {
        magnitudes = {0, 1, 2, 3, 4, 5, 6, 7};
      } else if (format == QuantFormat::kFp4E2M1) {
        magnitudes = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
      } else {
        magnitudes = {0, 0.25f, 0.5f, 1, 2, 4, 8, 16};
      }
      for (size_t begin = 0; begin < x.size(); begin += block) {
        const size_t end = std::min(x.size(), begin + static_cast<size_t>(block));
        float amax = 0.0f;
        for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float scale = amax / magnitudes.back();
        for (size_t i = begin; i < end; ++i) {
          float nearest = std::numeric_limits<float>::infinity();
          for (float m : magnitudes) {
            for (float sign : {-1.0f, 1.0f}) nearest = std::min(nearest, std::fabs(sign * m * scale - x[i]));
          }
          // The search and the codec round x / scale and q * scale once each: a float ulp of slack.
          EXPECT_LE(std::fabs(y[i] - x[i]), nearest + 4e-7f * std::fabs(x[i]) + 1e-12f)
              << edit::sync::to_string(format) << " block " << block << " value " << i;
        }
      }
    }
  }
}

// A NaN or Inf poisons its own block only: the receiver still sees a broken worker there.
TEST(Quantize, NonFiniteValuesPoisonTheirBlockOnly) {
  std::vector<float> x(8, 1.0f);
  x[1] = std::numeric_limits<float>::quiet_NaN();
  for (QuantFormat format : {QuantFormat::kInt8, QuantFormat::kFp4E2M1}) {
    const std::vector<float> y = round_trip(x, format, 4);
    for (int i = 0; i < 4; ++i) EXPECT_FALSE(std::isfinite(y[static_cast<size_t>(i)])) << i;
    for (int i = 4; i < 8; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], 1.0f) << i;
  }
  EXPECT_TRUE(std::isnan(round_trip(x, QuantFormat::kBf16, 2)[1]));
}

}  // namespace
