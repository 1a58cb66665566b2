// The thin adapter between NcclCommunicator and LibTorch's CUDA streams (needs EDIT_WITH_CUDA,
// i.e. a CUDA build of LibTorch). Everything else in comm/ sees streams only as void*.
#pragma once

#include "edit/comm/nccl_communicator.h"

namespace edit::comm {

// A StreamFn returning LibTorch's current CUDA stream on the calling thread, so collectives order
// themselves after the kernels the trainer queued there:
//   NcclCommunicator nccl(world, mesh.local_rank(), CommOptions::from_env(), torch_current_stream());
// Throws edit::Error where libedit was built without EDIT_WITH_CUDA.
NcclCommunicator::StreamFn torch_current_stream();

}  // namespace edit::comm
