// Umbrella header: everything a trainer author needs from libedit.
#pragma once

#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/device.h"
#include "edit/core/log.h"
#include "edit/core/torch_compat.h"

// The layers (see docs/architecture.md). Including them all costs LibTorch's nn headers.
#include "edit/comm/device_mesh.h"
#include "edit/comm/link_emulator.h"
#include "edit/comm/mpi_communicator.h"
#include "edit/comm/mpi_runtime.h"
#include "edit/comm/routed_communicator.h"
#include "edit/data/token_dataset.h"
#include "edit/data/tokenizer_record.h"
#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/aedit.h"
#include "edit/sync/factory.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/streaming.h"
#include "edit/train/checkpoint.h"
#include "edit/train/export.h"
#include "edit/train/run_dir.h"
#include "edit/train/stop_signal.h"
#include "edit/train/trainer.h"
