// Process-wide MPI state shared by MpiRuntime and MpiCommunicator (an implementation detail).
#pragma once

#include <ATen/core/Tensor.h>
#include <mpi.h>

#include <mutex>
#include <string>
#include <vector>

namespace edit::comm::detail {

// The lock around every MPI call libedit makes (MpiRuntime::lock() returns it). It is never
// destroyed, so exit handlers and late static destructors can still take it.
std::mutex& mpi_lock();

// MPI_Error_string, taken under mpi_lock(): call it without holding the lock.
std::string mpi_error_string(int code);

// Keeps the buffers of a collective abandoned in flight (it timed out or failed, or its
// communicator was destroyed under it) alive until the process ends. MPI has no way to cancel a
// started collective: a peer that joins late still makes MPI write into them, and freed memory
// there would be reused by the next tensor. Abandoning an op breaks the runtime, so MPI is never
// finalized after it and the graveyard is never emptied. Call it without holding mpi_lock().
void park_abandoned(MPI_Request request, std::vector<at::Tensor> buffers);

}  // namespace edit::comm::detail
