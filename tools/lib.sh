# Shared by tools/setup, tools/test and tools/quickstart (sourced, not run).
# Installs what is missing (Debian packages, the project's Python environment outside the checkout),
# configures and builds. Quiet when everything is already there.
set -euo pipefail

CW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CW_CACHE="${CHUNKWISE_CACHE:-$HOME/.cache/chunkwise}"
CW_VENV="${CHUNKWISE_VENV:-$CW_CACHE/venv}"
CW_BUILD="${CHUNKWISE_BUILD:-$CW_ROOT/build}"
CW_APT_PACKAGES=(cmake ninja-build g++ pkg-config ccache python3 python3-venv libsentencepiece-dev
  libhdf5-dev libboost-program-options-dev libgtest-dev nlohmann-json3-dev zlib1g-dev clang libclang-rt-14-dev)
CW_PIP_PACKAGES=(torch==2.11.0 numpy h5py safetensors matplotlib transformers peft)
# Installed without their dependencies: CUTLASS's C++ headers are all the CUDA build takes from this wheel.
CW_PIP_HEADERS=(nvidia-cutlass==4.2.0.0)

cw_log() { printf '[chunkwise] %s\n' "$*" >&2; }

cw_install_system() {
  local missing=()
  for p in "${CW_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  cw_log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

cw_install_python() {
  local stamp="$CW_VENV/.chunkwise-packages" wanted="${CW_PIP_PACKAGES[*]} ${CW_PIP_HEADERS[*]}"
  if [ -x "$CW_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    return 0
  fi
  cw_log "creating the Python environment in $CW_VENV (LibTorch comes from the torch wheel; first time: minutes)"
  mkdir -p "$CW_CACHE"
  [ -x "$CW_VENV/bin/python" ] || python3 -m venv "$CW_VENV"
  "$CW_VENV/bin/pip" install -q --disable-pip-version-check "${CW_PIP_PACKAGES[@]}"
  "$CW_VENV/bin/pip" install -q --disable-pip-version-check --no-deps "${CW_PIP_HEADERS[@]}"
  echo "$wanted" > "$stamp"
}

cw_build() {
  export CCACHE_BASEDIR="$CW_ROOT"
  export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
  export CCACHE_NOHASHDIR=1
  local jobs="${CHUNKWISE_JOBS:-$(nproc)}"
  if [ ! -f "$CW_BUILD/build.ninja" ]; then
    cmake -S "$CW_ROOT" -B "$CW_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCHUNKWISE_PYTHON="$CW_VENV/bin/python" "$@" >/dev/null
  fi
  cmake --build "$CW_BUILD" -j "$jobs"
}

# The CUDA configuration (kernels, the CUDA engine, GPU tests, LibTorch with CUDA) compiled where the CUDA
# toolkit is installed, so CUDA code is checked by CI even though nothing here can run it. CHUNKWISE_CUDA_BUILD=0 skips.
cw_build_cuda() {
  local nvcc
  nvcc="$(command -v nvcc || true)"
  [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
  if [ "${CHUNKWISE_CUDA_BUILD:-1}" = 0 ] || [ -z "$nvcc" ]; then
    cw_log "no CUDA toolkit (or CHUNKWISE_CUDA_BUILD=0): the CUDA build is not compiled"
    return 0
  fi
  local dir="${CHUNKWISE_BUILD_CUDA:-$CW_ROOT/build-cuda}"
  cw_log "compiling the CUDA build in $dir (sm_90a; it runs on the GPU machine, not here)"
  mkdir -p "$dir"
  if ! (CW_BUILD="$dir" cw_build -DCHUNKWISE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_CUDA_COMPILER="$nvcc") \
      > "$dir/build.log" 2>&1; then
    grep -B2 -A20 -m3 -E "error|FAILED" "$dir/build.log" >&2 || tail -40 "$dir/build.log" >&2
    cw_log "the CUDA build failed (full log: $dir/build.log)"
    return 1
  fi
}

cw_setup() {
  cw_install_system
  cw_install_python
}

# The quickstart corpus (Python docs) as HDF5 stores in $CW_ROOT/runs/data/pydocs: fetch, a 4,096-piece
# tokenizer, prepare. Skips what exists. $1: the chunkwise binary.
cw_prepare_pydocs() {
  local bin="$1" data="$CW_ROOT/runs/data/pydocs" corpus
  corpus=$("$bin" data fetch pydocs)
  mkdir -p "$data"
  if [ ! -f "$data/tokenizer.model" ]; then
    "$bin" data tokenizer --out "$data/tokenizer.model" --vocab-size 4096 --max-sentences 300000 "$corpus" \
      2> >(grep -v "LOG(INFO)" >&2)
  fi
  if [ ! -f "$data/train.h5" ] || [ ! -f "$data/val.h5" ]; then
    "$bin" data prepare --tokenizer "$data/tokenizer.model" --out "$data" "$corpus"
  fi
}
