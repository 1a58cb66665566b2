// Shared state of the multi-rank test binary.
#pragma once

#include <memory>

#include "edit/comm/mpi_communicator.h"

namespace edit::testing_support {

// The world communicator every test may use (built once in main).
std::shared_ptr<comm::MpiCommunicator> world();

}  // namespace edit::testing_support
