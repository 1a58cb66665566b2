// Process-wide MPI state shared by MpiRuntime and MpiCommunicator (an implementation detail).
#pragma once

#include <mpi.h>

#include <mutex>
#include <string>

namespace edit::comm::detail {

// The lock around every MPI call libedit makes (MpiRuntime::lock() returns it). It is never
// destroyed, so exit handlers and late static destructors can still take it.
std::mutex& mpi_lock();

// MPI_Error_string, taken under mpi_lock(): call it without holding the lock.
std::string mpi_error_string(int code);

}  // namespace edit::comm::detail
