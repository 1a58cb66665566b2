#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: dependencies, build, every test.
#   scripts/test.sh              everything
#   scripts/test.sh -L unit      only the quick single-process tests (any ctest arguments work)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
cd "$root"

declare -a phase_names=() phase_secs=()
phase() {  # phase NAME COMMAND...: runs it and remembers how long it took
  local name=$1 start=$SECONDS
  shift
  echo "=== $name"
  "$@"
  phase_names+=("$name")
  phase_secs+=($((SECONDS - start)))
}
report() {
  echo "=== time per phase"
  for i in "${!phase_names[@]}"; do printf '  %-8s %5d s\n' "${phase_names[$i]}" "${phase_secs[$i]}"; done
}
trap report EXIT

phase deps bash scripts/install-deps.sh
phase build bash scripts/build.sh -DEDIT_WERROR=ON
# Multi-rank tests are RUN_SERIAL (they oversubscribe the cores); the rest run two at a time.
phase test ctest --test-dir "$build" --output-on-failure --timeout 900 -j "${EDIT_TEST_JOBS:-2}" "$@"
