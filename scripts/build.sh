#!/usr/bin/env bash
# Configures and builds libedit (Release, Ninja, ccache when present) into ${EDIT_BUILD_DIR:-build}.
# Extra arguments go to CMake's configure step, e.g. scripts/build.sh -DEDIT_BUILD_KERNELS=OFF
# EDIT_BUILD_TARGETS="edit-train-gpt edit-prepare-text" builds only those targets (default: all).
# EDIT_BUILD_KEEP_GOING=1 goes on past a failed compile (Ninja), to report every error at once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}

# ccache: share hits between checkouts (base dir) and accept precompiled headers.
export CCACHE_BASEDIR="$root"
export CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

generator=()
command -v ninja >/dev/null && [[ ! -f "$build/Makefile" ]] && generator=(-G Ninja)
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
# One compile of a LibTorch file takes ~1 GB: cap parallelism by memory as well as cores.
jobs=${EDIT_JOBS:-$(nproc)}
targets=()
for target in ${EDIT_BUILD_TARGETS:-}; do targets+=(--target "$target"); done
# EDIT_BUILD_KEEP_GOING=1: compile everything that can be, so one build lists every error.
keep_going=()
[[ ${EDIT_BUILD_KEEP_GOING:-0} == 1 && -f "$build/build.ninja" ]] && keep_going=(-- -k 0)
cmake --build "$build" --parallel "$jobs" "${targets[@]}" "${keep_going[@]}"
