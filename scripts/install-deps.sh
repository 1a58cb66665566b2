#!/usr/bin/env bash
# Installs what libedit needs on Debian 12, and only what is missing (safe to run again).
#   scripts/install-deps.sh            install missing packages
#   scripts/install-deps.sh --check    list missing packages, exit 1 if any
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache git pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-openmp     # without it LibTorch uses the reference BLAS: ~7x slower training
  libtcmalloc-minimal4    # the programs' allocator: glibc's malloc unmaps and remaps big buffers every step
  libopenmpi-dev openmpi-bin
  libgtest-dev libspdlog-dev libcli11-dev nlohmann-json3-dev
  fortunes                # demo corpus for the quickstart
  gnuplot-nox             # loss plots (runs/*/loss.png)
  procps                  # pkill, used by the killed-save test
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [[ "${1:-}" == "--check" ]]; then
  if ((${#missing[@]})); then echo "missing: ${missing[*]}"; exit 1; fi
  echo "all dependencies present"; exit 0
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Recommends included: LibTorch's CMake config was only ever verified with them installed.
$sudo apt-get install -y -qq "${missing[@]}"
