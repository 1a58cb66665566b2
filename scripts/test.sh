#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: dependencies, build, every test.
#   scripts/test.sh              everything
#   scripts/test.sh -L unit      only the quick single-process tests (any ctest arguments work)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
cd "$root"

source "$root/scripts/phases.sh"

phase deps bash scripts/install-deps.sh
phase build bash scripts/build.sh -DEDIT_WERROR=ON
# Multi-rank tests are RUN_SERIAL (they oversubscribe the cores); the rest run two at a time.
phase test ctest --test-dir "$build" --output-on-failure --timeout 900 -j "${EDIT_TEST_JOBS:-2}" "$@"
