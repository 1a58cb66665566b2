// CUDA entry points of kernels/ for the quantized exchange of Streaming DiLoCo (docs/architecture.md, sync/).
//
// Raw device pointers and a cudaStream_t passed as void*, like pseudo_grad.h: the caller owns the
// memory and the ordering. The CPU twins with the same contract are edit::sync::quantize and
// edit::sync::dequantize (edit/sync/quantize.h, which has no LibTorch in it: the formats, the
// options and the packet layout are taken from there); tests compare the two.
#pragma once

#include <cstdint>

#include "edit/sync/quantize.h"

namespace edit::kernels {

// x[0, n) -> out[0, edit::sync::packet_bytes(n, options)): the same bytes as edit::sync::quantize,
// for every format (payload, then one fp32 scale per block, little-endian). Both sides compute
// each value through the same code (src/sync/quant_codec.h) and a block's max |x| is exact in any
// order, so the packets agree bit for bit. x and out must not overlap; out needs no alignment.
// Asynchronous on `stream`; invalid options and a failed launch throw edit::Error.
void quantize_cuda(const float* x, std::int64_t n, const sync::QuantOptions& options, std::uint8_t* out,
                   void* stream);

// packet -> out[0, n): the same floats as edit::sync::dequantize, bit for bit. packet and out must
// not overlap; the packet needs no alignment. Asynchronous on `stream`; errors as above.
void dequantize_cuda(const std::uint8_t* packet, std::int64_t n, const sync::QuantOptions& options,
                     float* out, void* stream);

}  // namespace edit::kernels
