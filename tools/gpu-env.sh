# Sourced by the GPU machine's scripts (tools/gpu-run, tools/gpu-ab, tools/gpu-dp), from the repository root:
# unpacks what tools/gpu-prepare carried (.deps/debs: Boost.Program_options, nlohmann-json, the CUTLASS
# headers' wheel) into /tmp/cw-deps and puts it first on the compiler's and the loader's paths; for binaries
# compiled on the CPU machine (CW_GPU_PREBUILT=1), adds LibTorch's and CUDA's libraries and checks that every
# binary finds all of its libraries.
# Must not: build or run anything (the scripts do), or exit the script that sources it.
CW_DEPS=/tmp/cw-deps
CW_PY="$(command -v python3)"
CW_CUTLASS_DIR=""

cw_gpu_unpack_deps() {
  [ -d .deps/debs ] || return 0
  mkdir -p "$CW_DEPS"
  local f
  for f in .deps/debs/*.deb; do dpkg -x "$f" "$CW_DEPS"; done
  for f in .deps/debs/nvidia_cutlass-*.whl; do [ -f "$f" ] && "$CW_PY" -m zipfile -e "$f" "$CW_DEPS/cutlass"; done
  export CPLUS_INCLUDE_PATH="$CW_DEPS/usr/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
  export LIBRARY_PATH="$CW_DEPS/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$CW_DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -f "$CW_DEPS/cutlass/cutlass_library/source/include/cutlass/cutlass.h" ] &&
    CW_CUTLASS_DIR="$CW_DEPS/cutlass/cutlass_library/source"
  return 0
}

# cw_gpu_prebuilt_env BINARY...: LibTorch's libraries (the machine's torch wheel, the version the binaries were
# compiled against) and CUDA's on the loader's path; returns 2, naming what is missing, unless every BINARY
# exists and finds all its libraries.
# Debian libraries whose C++ ABI differs from the GPU machine's copies under the same soname (.deps/prebuilt:
# SentencePiece) come first for them.
cw_gpu_prebuilt_env() {
  local torch_lib b f missing=0
  torch_lib="$("$CW_PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  export LD_LIBRARY_PATH="$torch_lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ls .deps/prebuilt/*.deb > /dev/null 2>&1; then
    mkdir -p "$CW_DEPS-prebuilt"
    for f in .deps/prebuilt/*.deb; do dpkg -x "$f" "$CW_DEPS-prebuilt"; done
    export LD_LIBRARY_PATH="$CW_DEPS-prebuilt/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
  else
    echo "no .deps/prebuilt (tools/gpu-prepare): the prebuilt binaries load this machine's SentencePiece, whose C++ ABI differs"
  fi
  for b in "$@"; do
    if [ ! -x "$b" ]; then echo "$b: missing (compile it on the CPU machine and carry its folder)"; missing=1; continue; fi
    if ldd "$b" | grep -q "not found"; then ldd "$b" | grep "not found" | sed "s|^|$b: |"; missing=1; fi
  done
  [ $missing = 0 ] || { echo "prebuilt binaries missing or libraries not found (carry their folder and .deps; see above)"; return 2; }
}
