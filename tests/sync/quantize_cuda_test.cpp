// The CUDA quantizer (edit/kernels/quantize.h) against its CPU twin (edit/sync/quantize.h): the
// same packet bytes and the same dequantized floats, bit for bit, for every format, on inputs
// built to reach each rounding rule: exact ties, values on the grid and next to ties, blocks of
// zeros, subnormals, values near FLT_MAX, NaN and Inf in single blocks, and arbitrary bit patterns.
// Sizes cover n = 1, odd n (a lone value in the last nibble), a block minus one, a block plus one,
// many blocks and ~1e6 values; block sizes from 2 to 4096 change how the kernel splits a CTA.
//
// The kernel comparison needs kernels/ and a GPU and skips with a message otherwise. The first
// test runs everywhere: it pins the tie rules on the CPU with the very inputs the kernel sees, so
// the comparison is known to cover them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/sync/quantize.h"
#if EDIT_HAS_KERNELS
#include <cuda_runtime.h>

#include "edit/kernels/pseudo_grad.h"  // cuda_device_count()
#include "edit/kernels/quantize.h"
#endif

namespace {

using edit::sync::packet_bytes;
using edit::sync::QuantFormat;
using edit::sync::QuantOptions;

constexpr QuantFormat kAllFormats[] = {QuantFormat::kFp32, QuantFormat::kBf16,    QuantFormat::kInt8,
                                       QuantFormat::kInt4, QuantFormat::kFp4E2M1, QuantFormat::kFp4E3M0};

bool blockwise(QuantFormat format) { return format != QuantFormat::kFp32 && format != QuantFormat::kBf16; }

// The largest code magnitude (edit/sync/quantize.h): a block's max |x| maps onto it.
float code_top(QuantFormat format) {
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

// The representable magnitudes of a blockwise format, ascending.
std::vector<float> grid_of(QuantFormat format) {
  if (format == QuantFormat::kFp4E2M1) return {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  if (format == QuantFormat::kFp4E3M0) return {0, 0.25f, 0.5f, 1, 2, 4, 8, 16};
  std::vector<float> grid;
  for (int q = 0; q <= static_cast<int>(code_top(format)); ++q) grid.push_back(static_cast<float>(q));
  return grid;
}

// Midpoints between neighbouring representable magnitudes: where the rounding rule decides.
std::vector<float> ties_of(QuantFormat format) {
  const std::vector<float> grid = grid_of(format);
  std::vector<float> ties;
  for (size_t c = 1; c < grid.size(); ++c) ties.push_back(0.5f * (grid[c - 1] + grid[c]));
  return ties;
}

// A power of two: x / scale and q * scale are exact, so a midpoint stays an exact tie.
constexpr float kTieScale = 1.0f / 64;

float from_bits(std::uint32_t bits) {
  float x = 0.0f;
  std::memcpy(&x, &bits, 4);
  return x;
}

std::uint32_t bits_of(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, 4);
  return bits;
}

enum class Pattern { kNormal, kTies, kGrid, kZeroBlocks, kSubnormal, kHuge, kNonFinite, kAnyBits };
// n values of the given pattern for `format` in blocks of `block`.
std::vector<float> make_input(Pattern pattern, QuantFormat format, std::int64_t n, std::int64_t block,
                              std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto sign = [&] { return rng() % 2 ? -1.0f : 1.0f; };
  std::vector<float> x(static_cast<size_t>(n));
  const std::int64_t blocks = (n + block - 1) / block;
  switch (pattern) {
    case Pattern::kNormal:
      for (float& v : x) v = 1e-3f * normal(rng);
      break;
    case Pattern::kTies:
      if (!blockwise(format)) {
        // bf16 ties: the low 16 bits exactly half an ulp (0x8000), with both parities of the kept
        // bits, and their neighbours 0x7fff / 0x8001.
        const std::uint32_t lows[] = {0x8000u, 0x8000u, 0x7fffu, 0x8001u};
        for (size_t i = 0; i < x.size(); ++i) {
          const std::uint32_t high =
              (static_cast<std::uint32_t>(rng()) & 0x80ff0000u) | 0x3f000000u;  // |x| ~ 0.5 .. 2
          x[i] = from_bits(high | lows[i % 4]);
        }
        break;
      }
      {
        // Each block: its first value sets the scale to kTieScale exactly; then midpoints, and now
        // and then the float just above or below one.
        const std::vector<float> ties = ties_of(format);
        for (size_t i = 0; i < x.size(); ++i) {
          if (static_cast<std::int64_t>(i) % block == 0) {
            x[i] = sign() * code_top(format) * kTieScale;
            continue;
          }
          float v = sign() * ties[rng() % ties.size()] * kTieScale;
          if (i % 5 == 3) v = std::nextafter(v, i % 2 ? 0.0f : 2 * v);
          x[i] = v;
        }
      }
      break;
    case Pattern::kGrid:
      if (!blockwise(format)) {
        for (float& v : x)
          v = std::ldexp(std::round(normal(rng) * 128.0f), -7);  // 8 significant bits: bf16-exact
        break;
      }
      {
        const std::vector<float> grid = grid_of(format);
        for (size_t i = 0; i < x.size(); ++i) {
          x[i] = sign() *
                 (static_cast<std::int64_t>(i) % block == 0 ? grid.back() : grid[rng() % grid.size()]) *
                 kTieScale;
        }
      }
      break;
    case Pattern::kZeroBlocks:
      // Every other block all zeros (with -0 among them); the rest small normals.
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] = (static_cast<std::int64_t>(i) / block) % 2 == 0 ? (i % 3 ? 0.0f : -0.0f) : 1e-2f * normal(rng);
      }
      break;
    case Pattern::kSubnormal:
      // Below FLT_MIN: scales and quotients round in the subnormal range, where a device that
      // flushes to zero would differ; multiples of the smallest subnormal among them.
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] = i % 4 == 0
                   ? sign() * static_cast<float>(rng() % 300) * std::numeric_limits<float>::denorm_min()
                   : 1e-40f * normal(rng);
      }
      break;
    case Pattern::kHuge:
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] = i % 7 == 0 ? sign() * std::numeric_limits<float>::max() : 1e37f * normal(rng);
      }
      break;
    case Pattern::kNonFinite: {
      for (float& v : x) v = normal(rng);
      const std::int64_t last = n - 1;
      const std::int64_t middle = (blocks / 2) * block;
      x[static_cast<size_t>(n > 1 ? 1 : 0)] = std::numeric_limits<float>::quiet_NaN();  // first block
      if (middle < n) x[static_cast<size_t>(middle)] = std::numeric_limits<float>::infinity();
      if (last / block != 0)
        x[static_cast<size_t>(last)] = -std::numeric_limits<float>::infinity();  // last block
      break;
    }
    case Pattern::kAnyBits:
      // Every exponent, NaNs with payloads and signs, Inf, subnormals.
      for (float& v : x) v = from_bits(static_cast<std::uint32_t>(rng()));
      break;
  }
  return x;
}

std::vector<std::uint8_t> cpu_packet(const std::vector<float>& x, const QuantOptions& options) {
  const std::int64_t n = static_cast<std::int64_t>(x.size());
  std::vector<std::uint8_t> packet(static_cast<size_t>(packet_bytes(n, options)));
  edit::sync::quantize(x.data(), n, options, packet.data());
  return packet;
}

// --- The tie rules on the CPU, with the inputs the kernel comparison uses --------------------------

TEST(QuantizeCudaInputs, TiesFollowTheDocumentedRulesOnTheCpu) {
  const std::int64_t n = 4096, block = 64;
  for (QuantFormat format : kAllFormats) {
    if (format == QuantFormat::kFp32) continue;
    const QuantOptions options{format, block};
    const std::vector<float> x = make_input(Pattern::kTies, format, n, block, 1);
    const std::vector<std::uint8_t> packet = cpu_packet(x, options);
    std::vector<float> y(x.size());
    edit::sync::dequantize(packet.data(), n, options, y.data());
    int ties = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (format == QuantFormat::kBf16) {
        if ((bits_of(x[i]) & 0xffffu) != 0x8000u) continue;
        // Halfway: to the even one of the two neighbours (the kept bits' lowest bit clear).
        const std::uint32_t down = bits_of(x[i]) & 0xffff0000u;
        const std::uint32_t expected = (down & 0x10000u) ? down + 0x10000u : down;
        EXPECT_EQ(bits_of(y[i]), expected) << "bf16 value " << i;
        ++ties;
        continue;
      }
      const float units = std::fabs(x[i]) / kTieScale;  // exact: a power-of-two scale
      const std::vector<float> grid = grid_of(format);
      for (size_t c = 1; c < grid.size(); ++c) {
        if (units != 0.5f * (grid[c - 1] + grid[c])) continue;
        // Integers: away from zero. fp4: the lower magnitude.
        const bool integer = format == QuantFormat::kInt8 || format == QuantFormat::kInt4;
        const float magnitude = integer ? grid[c] : grid[c - 1];
        EXPECT_EQ(y[i], std::copysign(magnitude * kTieScale, x[i]))
            << edit::sync::to_string(format) << " value " << i;
        ++ties;
      }
    }
    EXPECT_GT(ties, 1000) << edit::sync::to_string(format) << ": the tie inputs hold too few exact ties";
  }
}

// --- The CUDA kernels against the CPU twin -------------------------------------------------------

#if EDIT_HAS_KERNELS
constexpr Pattern kAllPatterns[] = {Pattern::kNormal,     Pattern::kTies,      Pattern::kGrid,
                                    Pattern::kZeroBlocks, Pattern::kSubnormal, Pattern::kHuge,
                                    Pattern::kNonFinite,  Pattern::kAnyBits};

const char* to_string(Pattern pattern) {
  switch (pattern) {
    case Pattern::kNormal:
      return "normal";
    case Pattern::kTies:
      return "ties";
    case Pattern::kGrid:
      return "grid";
    case Pattern::kZeroBlocks:
      return "zero blocks";
    case Pattern::kSubnormal:
      return "subnormal";
    case Pattern::kHuge:
      return "huge";
    case Pattern::kNonFinite:
      return "non-finite";
    case Pattern::kAnyBits:
      return "any bits";
  }
  return "?";
}

// Owns one cudaMalloc'd allocation; freed on every exit of a test, failed assertions included.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) { status_ = cudaMalloc(&data_, bytes); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  bool ok() const { return status_ == cudaSuccess; }
  std::uint8_t* bytes() const { return static_cast<std::uint8_t*>(data_); }

 private:
  void* data_ = nullptr;
  cudaError_t status_ = cudaErrorMemoryAllocation;
};

class Stream {
 public:
  Stream() { status_ = cudaStreamCreate(&stream_); }
  ~Stream() {
    if (status_ == cudaSuccess) cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  bool ok() const { return status_ == cudaSuccess; }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
  cudaError_t status_ = cudaErrorUnknown;
};

// Bytes around the output that the kernels must leave alone.
constexpr size_t kGuard = 16;
constexpr std::uint8_t kPoison = 0xee;

// "byte 12 of 40 (payload): cpu 0x3a, gpu 0x2a" for the first difference, or "" when equal.
std::string first_difference(const std::vector<std::uint8_t>& cpu, const std::vector<std::uint8_t>& gpu,
                             std::int64_t payload) {
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (cpu[i] == gpu[i]) continue;
    const std::int64_t at = static_cast<std::int64_t>(i);
    return "byte " + std::to_string(at) + " of " + std::to_string(cpu.size()) +
           (at < payload ? " (payload)" : " (scale " + std::to_string((at - payload) / 4) + ")") + ": cpu " +
           std::to_string(cpu[i]) + ", gpu " + std::to_string(gpu[i]);
  }
  return "";
}

// quantize_cuda against quantize, and dequantize_cuda against dequantize on the CPU's packet.
// `offset` shifts x by that many floats and the packet by that many bytes inside their
// allocations: the packet needs no alignment, and an odd address must not matter.
void expect_gpu_matches_cpu(const std::vector<float>& x, const QuantOptions& options, size_t offset,
                            const std::string& what) {
  const std::int64_t n = static_cast<std::int64_t>(x.size());
  const std::vector<std::uint8_t> expected = cpu_packet(x, options);
  const size_t bytes = expected.size();
  std::vector<float> expected_values(x.size());
  edit::sync::dequantize(expected.data(), n, options, expected_values.data());

  Stream stream;
  ASSERT_TRUE(stream.ok()) << what;
  DeviceBuffer d_x((x.size() + offset) * sizeof(float));
  DeviceBuffer d_packet(offset + bytes + kGuard);
  DeviceBuffer d_values((offset + x.size()) * sizeof(float) + kGuard);
  ASSERT_TRUE(d_x.ok() && d_packet.ok() && d_values.ok()) << what;
  float* x_at = reinterpret_cast<float*>(d_x.bytes()) + offset;
  std::uint8_t* packet_at = d_packet.bytes() + offset;
  float* values_at = reinterpret_cast<float*>(d_values.bytes() + offset * sizeof(float));

  // quantize: every byte of the packet written, none outside it.
  ASSERT_EQ(cudaMemcpy(x_at, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(d_packet.bytes(), kPoison, offset + bytes + kGuard), cudaSuccess);
  edit::kernels::quantize_cuda(x_at, n, options, packet_at, stream.get());
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess) << what;
  std::vector<std::uint8_t> all(offset + bytes + kGuard);
  ASSERT_EQ(cudaMemcpy(all.data(), d_packet.bytes(), all.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  const std::vector<std::uint8_t> got(all.begin() + static_cast<std::ptrdiff_t>(offset),
                                      all.begin() + static_cast<std::ptrdiff_t>(offset + bytes));
  EXPECT_EQ(first_difference(expected, got, edit::sync::payload_bytes(n, options)), "") << what;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i >= offset && i < offset + bytes) continue;
    ASSERT_EQ(all[i], kPoison) << what << ": quantize_cuda wrote byte " << i << " outside the packet";
  }

  // dequantize the CPU's packet: the same floats, bit for bit (NaN payloads included).
  ASSERT_EQ(cudaMemcpy(packet_at, expected.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  const size_t values_bytes = (offset + x.size()) * sizeof(float) + kGuard;
  ASSERT_EQ(cudaMemset(d_values.bytes(), kPoison, values_bytes), cudaSuccess);
  edit::kernels::dequantize_cuda(packet_at, n, options, values_at, stream.get());
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess) << what;
  std::vector<std::uint8_t> values(values_bytes);
  ASSERT_EQ(cudaMemcpy(values.data(), d_values.bytes(), values_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  for (size_t i = 0; i < x.size(); ++i) {
    float v = 0.0f;
    std::memcpy(&v, values.data() + (offset + i) * sizeof(float), sizeof(float));
    if (bits_of(v) != bits_of(expected_values[i])) {
      ADD_FAILURE() << what << ": value " << i << " (block " << static_cast<std::int64_t>(i) / options.block
                    << ") cpu " << expected_values[i] << " (0x" << std::hex << bits_of(expected_values[i])
                    << "), gpu " << v << " (0x" << bits_of(v) << std::dec << ")";
      break;
    }
  }
  for (size_t i = 0; i < values_bytes; ++i) {
    if (i >= offset * sizeof(float) && i < (offset + x.size()) * sizeof(float)) continue;
    ASSERT_EQ(values[i], kPoison) << what << ": dequantize_cuda wrote byte " << i << " outside the output";
  }
}
#endif

// One test over every case (not a parameterized suite): a process per case would cost minutes
// of start-up where the suite only skips.
// n: one value, one pair, a block of 128 minus one (odd: a lone last nibble) and plus one, many
// blocks, and ~1e6 (odd). block: pairs only (one 4-bit lane per block, 256 blocks a CTA), a warp's
// worth, the default, and more values than a CTA has threads.
TEST(QuantizeCuda, PacketsAndValuesMatchCpuBitForBit) {
#if !EDIT_HAS_KERNELS
  GTEST_SKIP() << "built without kernels/ (EDIT_BUILD_KERNELS=OFF)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  std::uint32_t seed = 0;
  for (QuantFormat format : kAllFormats) {
    for (std::int64_t n : {std::int64_t{1}, std::int64_t{2}, std::int64_t{127}, std::int64_t{129},
                           std::int64_t{1001}, std::int64_t{(1 << 20) + 1}}) {
      for (std::int64_t block : {std::int64_t{2}, std::int64_t{32}, std::int64_t{128}, std::int64_t{4096}}) {
        const QuantOptions options{format, block};
        for (Pattern pattern : kAllPatterns) {
          const std::vector<float> x = make_input(pattern, format, n, block, ++seed);
          for (size_t offset : {size_t{0}, size_t{1}}) {
            const std::string what = std::string(edit::sync::to_string(format)) + ", n " + std::to_string(n) +
                                     ", block " + std::to_string(block) + ", " + to_string(pattern) +
                                     " inputs, offset " + std::to_string(offset);
            expect_gpu_matches_cpu(x, options, offset, what);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
#endif
}

TEST(QuantizeCudaOptions, InvalidBlockIsRefusedLikeOnTheCpu) {
#if !EDIT_HAS_KERNELS
  GTEST_SKIP() << "built without kernels/ (EDIT_BUILD_KERNELS=OFF)";
#else
  // Checked on the host before anything touches the pointers, so no device is needed.
  EXPECT_THROW(edit::kernels::quantize_cuda(nullptr, 4, {QuantFormat::kInt8, 3}, nullptr, nullptr),
               edit::Error);
  EXPECT_THROW(edit::kernels::dequantize_cuda(nullptr, 4, {QuantFormat::kInt4, 0}, nullptr, nullptr),
               edit::Error);
  EXPECT_THROW(edit::kernels::quantize_cuda(nullptr, -1, {QuantFormat::kInt8, 128}, nullptr, nullptr),
               edit::Error);
  // n = 0 is a no-op, launching nothing.
  EXPECT_NO_THROW(edit::kernels::quantize_cuda(nullptr, 0, {QuantFormat::kFp4E2M1, 128}, nullptr, nullptr));
#endif
}

}  // namespace
