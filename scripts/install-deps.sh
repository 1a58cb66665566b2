#!/usr/bin/env bash
# Installs what libedit needs on Debian 12, and only what is missing (safe to run again).
#   scripts/install-deps.sh             install missing packages
#   scripts/install-deps.sh --programs  only what building and running the programs needs (the
#                                       quickstart), not the references the tests compare against
#   scripts/install-deps.sh --check     list missing packages, exit 1 if any (with --programs: of those)
set -euo pipefail

check=0 programs_only=0
for arg in "$@"; do
  case $arg in
    --check) check=1 ;;
    --programs) programs_only=1 ;;
    *) echo "install-deps: unknown argument '$arg'; use --check and/or --programs" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build ccache git pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-openmp     # without it LibTorch uses the reference BLAS: ~7x slower training
  libdnnl-dev             # oneDNN's sgemm for the models' CPU matrix products (LibTorch already links libdnnl2)
  libtcmalloc-minimal4    # the programs' allocator: glibc's malloc unmaps and remaps big buffers every step
  libopenmpi-dev openmpi-bin
  libgtest-dev libspdlog-dev libcli11-dev nlohmann-json3-dev
  fortunes                # demo corpus for the quickstart
  gnuplot-nox             # loss plots (runs/*/loss.png)
)
# For the tests only.
test_packages=(
  procps                  # pkill, used by the killed-save test
  nodejs curl             # the GPT-2 tokenizer's reference (npm gpt-3-encoder), run by node
  python3-torch           # the reference forward that checks edit-export --format hf (tests/models/hf_reference.py)
)
((programs_only)) || packages+=("${test_packages[@]}")

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((check)); then
  if ((${#missing[@]})); then echo "missing: ${missing[*]}"; exit 1; fi
  echo "all dependencies present"; exit 0
fi

# The reference for GPT-2's tokenizer (tests/data/gpt2_tokenizer_test.cpp): the npm package
# gpt-3-encoder (~2 MB), fetched from the npm registry into .cache/npm, where the build looks by
# default. Optional: without node or the registry that test is skipped, so a failure only warns.
fetch_gpt2_reference() {
  ((programs_only)) && return 0
  local root dest tarball
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  dest="$root/.cache/npm/node_modules/gpt-3-encoder"
  [[ -f "$dest/Encoder.js" ]] && return 0
  tarball="https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz"
  mkdir -p "$dest"
  if command -v curl >/dev/null && timeout 120 curl -fsSL "$tarball" | tar -xz -C "$dest" --strip-components=1; then
    echo "install-deps: gpt-3-encoder in $dest (reference for the GPT-2 tokenizer test)"
  else
    rm -rf "$dest"
    echo "install-deps: warning: could not fetch $tarball; the GPT-2 tokenizer reference test will skip" >&2
  fi
}

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  fetch_gpt2_reference
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
fetch_gpt2_reference
