// Whether the models' CPU paths take oneDNN in this process (an internal header of src/models).
#pragma once

namespace edit::models::detail {

// Built with oneDNN (EDIT_HAS_ONEDNN) and not switched off with EDIT_CPU_GEMM=aten (read once).
bool onednn_enabled();

}  // namespace edit::models::detail
