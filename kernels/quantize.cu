#include <cstdint>

#include "cuda_check.cuh"
#include "edit/kernels/quantize.h"
#include "sync/quant_codec.h"

namespace edit::kernels {
namespace {

namespace codec = sync::quant_codec;
using sync::QuantFormat;

constexpr int kThreads = 256;
// Enough blocks to fill a Hopper's 132 SMs several times over; each thread strides the rest.
constexpr int kMaxBlocks = 2048;

int grid_for(std::int64_t items, std::int64_t items_per_cta) {
  const std::int64_t wanted = (items + items_per_cta - 1) / items_per_cta;
  return static_cast<int>(wanted < kMaxBlocks ? wanted : kMaxBlocks);
}

// (n) floats -> (2n) bytes, each bf16 low byte first, as the CPU writes them.
__global__ void bf16_encode_kernel(const float* __restrict__ x, std::int64_t n,
                                   std::uint8_t* __restrict__ out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const std::uint16_t h = codec::to_bf16(x[i]);
    out[2 * i] = static_cast<std::uint8_t>(h & 0xffu);
    out[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
  }
}

// (2n) bytes -> (n) floats.
__global__ void bf16_decode_kernel(const std::uint8_t* __restrict__ packet, std::int64_t n,
                                   float* __restrict__ out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    out[i] = codec::from_bf16(static_cast<std::uint16_t>(packet[2 * i] | (packet[2 * i + 1] << 8)));
  }
}

// Blockwise formats, (n) floats -> payload + one scale per block of `block` values.
//
// A team of `lanes` threads (a power of two dividing kThreads) owns one quantization block at a
// time. The team reduces the block's max |x| in shared memory (max is exact and order-free over
// amax_term's values, so this equals the CPU's sequential loop), every lane derives the scale from
// the result by the same division, lane 0 stores it, and the lanes encode. A 4-bit lane takes the
// pair of values (2p, 2p + 1), i.e. the whole byte p, so no two threads write one byte; blocks are
// even, so a pair never straddles two blocks, and an odd n's last byte gets a zero high nibble as
// on the CPU.
template <QuantFormat kFormat>
__global__ void quantize_blocks_kernel(const float* __restrict__ x, std::int64_t n, std::int64_t block,
                                       int lanes, std::uint8_t* __restrict__ payload,
                                       std::uint8_t* __restrict__ scales) {
  constexpr bool kFourBit = kFormat != QuantFormat::kInt8;
  __shared__ float partial[kThreads];
  const int teams = kThreads / lanes;
  const int team = static_cast<int>(threadIdx.x) / lanes;
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  const std::int64_t blocks = (n + block - 1) / block;
  // The bound depends on blockIdx only: every thread of the CTA reaches each __syncthreads, teams
  // past the last block included (they reduce nothing and write nothing).
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * teams; first < blocks;
       first += static_cast<std::int64_t>(gridDim.x) * teams) {
    const std::int64_t b = first + team;
    const std::int64_t begin = b * block;
    const std::int64_t end = b >= blocks ? begin : (n - begin < block ? n : begin + block);
    float amax = 0.0f;
    for (std::int64_t i = begin + lane; i < end; i += lanes) {
      amax = codec::max_of(amax, codec::amax_term(x[i]));
    }
    partial[threadIdx.x] = amax;
    __syncthreads();
    for (int s = lanes / 2; s > 0; s /= 2) {
      if (lane < s) partial[threadIdx.x] = codec::max_of(partial[threadIdx.x], partial[threadIdx.x + s]);
      __syncthreads();
    }
    const float scale = codec::block_scale(kFormat, partial[team * lanes]);
    if (b < blocks) {
      if (lane == 0) codec::store_scale(scales + 4 * b, scale);
      if constexpr (kFourBit) {
        for (std::int64_t p = begin / 2 + lane; 2 * p < end; p += lanes) {
          const std::int64_t i = 2 * p;
          const std::uint8_t low = codec::encode4(kFormat, codec::scaled(x[i], scale));
          const std::uint8_t high = i + 1 < end ? codec::encode4(kFormat, codec::scaled(x[i + 1], scale)) : 0;
          payload[p] = static_cast<std::uint8_t>(low | (high << 4));  // even index in the low nibble
        }
      } else {
        for (std::int64_t i = begin + lane; i < end; i += lanes) {
          payload[i] = codec::encode_int8(codec::scaled(x[i], scale));
        }
      }
    }
    __syncthreads();  // every lane has read partial[] before the next round rewrites it
  }
}

// Blockwise formats back: one int8 code, or one byte of two 4-bit codes, a thread; each reads its
// block's scale (4 bytes, cached: neighbours share it).
template <QuantFormat kFormat>
__global__ void dequantize_blocks_kernel(const std::uint8_t* __restrict__ payload,
                                         const std::uint8_t* __restrict__ scales, std::int64_t n,
                                         std::int64_t block, float* __restrict__ out) {
  constexpr bool kFourBit = kFormat != QuantFormat::kInt8;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if constexpr (kFourBit) {
    const std::int64_t bytes = (n + 1) / 2;
    for (std::int64_t p = first; p < bytes; p += stride) {
      const std::int64_t i = 2 * p;
      const float scale = codec::load_scale(scales + 4 * (i / block));  // i + 1 is in the same (even) block
      const std::uint8_t byte = payload[p];
      out[i] =
          codec::dequantize_value(codec::decode4(kFormat, static_cast<std::uint8_t>(byte & 0xfu)), scale);
      if (i + 1 < n) {
        out[i + 1] =
            codec::dequantize_value(codec::decode4(kFormat, static_cast<std::uint8_t>(byte >> 4)), scale);
      }
    }
  } else {
    for (std::int64_t i = first; i < n; i += stride) {
      out[i] = codec::dequantize_value(codec::decode_int8(payload[i]),
                                       codec::load_scale(scales + 4 * (i / block)));
    }
  }
}

template <QuantFormat kFormat>
void launch_quantize_blocks(const float* x, std::int64_t n, std::int64_t block, std::uint8_t* payload,
                            std::uint8_t* scales, cudaStream_t stream) {
  // One lane per value (int8) or per pair (4-bit), up to a whole CTA for blocks of 256+ items:
  // small blocks share a CTA instead of leaving most of its threads idle.
  const std::int64_t items = kFormat == QuantFormat::kInt8 ? block : block / 2;
  int lanes = 1;
  while (lanes < kThreads && lanes < items) lanes *= 2;
  const std::int64_t blocks = (n + block - 1) / block;
  quantize_blocks_kernel<kFormat>
      <<<grid_for(blocks, kThreads / lanes), kThreads, 0, stream>>>(x, n, block, lanes, payload, scales);
}

template <QuantFormat kFormat>
void launch_dequantize_blocks(const std::uint8_t* payload, const std::uint8_t* scales, std::int64_t n,
                              std::int64_t block, float* out, cudaStream_t stream) {
  const std::int64_t items = kFormat == QuantFormat::kInt8 ? n : (n + 1) / 2;
  dequantize_blocks_kernel<kFormat>
      <<<grid_for(items, kThreads), kThreads, 0, stream>>>(payload, scales, n, block, out);
}

}  // namespace

void quantize_cuda(const float* x, std::int64_t n, const sync::QuantOptions& options, std::uint8_t* out,
                   void* stream) {
  options.validate();
  EDIT_CHECK(n >= 0, "quantize_cuda of ", n, " values; pass the number of floats at x (0 or more)");
  if (n == 0) return;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  std::uint8_t* scales = out + sync::payload_bytes(n, options);
  switch (options.format) {
    case QuantFormat::kFp32:
      EDIT_CUDA_CHECK(
          cudaMemcpyAsync(out, x, static_cast<size_t>(4 * n), cudaMemcpyDeviceToDevice, cuda_stream));
      return;
    case QuantFormat::kBf16:
      bf16_encode_kernel<<<grid_for(n, kThreads), kThreads, 0, cuda_stream>>>(x, n, out);
      break;
    case QuantFormat::kInt8:
      launch_quantize_blocks<QuantFormat::kInt8>(x, n, options.block, out, scales, cuda_stream);
      break;
    case QuantFormat::kInt4:
      launch_quantize_blocks<QuantFormat::kInt4>(x, n, options.block, out, scales, cuda_stream);
      break;
    case QuantFormat::kFp4E2M1:
      launch_quantize_blocks<QuantFormat::kFp4E2M1>(x, n, options.block, out, scales, cuda_stream);
      break;
    case QuantFormat::kFp4E3M0:
      launch_quantize_blocks<QuantFormat::kFp4E3M0>(x, n, options.block, out, scales, cuda_stream);
      break;
  }
  EDIT_CUDA_CHECK(cudaGetLastError());
}

void dequantize_cuda(const std::uint8_t* packet, std::int64_t n, const sync::QuantOptions& options,
                     float* out, void* stream) {
  options.validate();
  EDIT_CHECK(n >= 0, "dequantize_cuda of ", n,
             " values; pass the number of floats the packet holds (0 or more)");
  if (n == 0) return;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  const std::uint8_t* scales = packet + sync::payload_bytes(n, options);
  switch (options.format) {
    case QuantFormat::kFp32:
      EDIT_CUDA_CHECK(
          cudaMemcpyAsync(out, packet, static_cast<size_t>(4 * n), cudaMemcpyDeviceToDevice, cuda_stream));
      return;
    case QuantFormat::kBf16:
      bf16_decode_kernel<<<grid_for(n, kThreads), kThreads, 0, cuda_stream>>>(packet, n, out);
      break;
    case QuantFormat::kInt8:
      launch_dequantize_blocks<QuantFormat::kInt8>(packet, scales, n, options.block, out, cuda_stream);
      break;
    case QuantFormat::kInt4:
      launch_dequantize_blocks<QuantFormat::kInt4>(packet, scales, n, options.block, out, cuda_stream);
      break;
    case QuantFormat::kFp4E2M1:
      launch_dequantize_blocks<QuantFormat::kFp4E2M1>(packet, scales, n, options.block, out, cuda_stream);
      break;
    case QuantFormat::kFp4E3M0:
      launch_dequantize_blocks<QuantFormat::kFp4E3M0>(packet, scales, n, options.block, out, cuda_stream);
      break;
  }
  EDIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace edit::kernels
