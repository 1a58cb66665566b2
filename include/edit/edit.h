// Umbrella header: everything a trainer author needs from libedit.
#pragma once

#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "edit/core/torch_compat.h"
