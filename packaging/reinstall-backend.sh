#!/usr/bin/env bash
# Rebuild llama-cpp-python inside localr1's environment for a GPU backend.
#
#   packaging/reinstall-backend.sh cuda     # NVIDIA (needs the CUDA toolkit: nvcc)
#   packaging/reinstall-backend.sh metal    # Apple Silicon (the default build on macOS already has Metal)
#   packaging/reinstall-backend.sh vulkan   # AMD / Intel / NVIDIA through Vulkan (needs the Vulkan SDK)
#   packaging/reinstall-backend.sh cpu      # back to the CPU-only build
#
# It finds the environment from the `localr1` on PATH (pipx, a venv, or --python PATH), and rebuilds the
# same llama-cpp-python version from source with the matching CMake flags. The build takes 5-15 minutes.
set -euo pipefail
backend="${1:-}"
python="${2:-}"
case "$backend" in
  cuda) flags="-DGGML_CUDA=on" ;;
  metal) flags="-DGGML_METAL=on" ;;
  vulkan) flags="-DGGML_VULKAN=on" ;;
  cpu) flags="-DGGML_CUDA=off -DGGML_METAL=off -DGGML_VULKAN=off" ;;
  *) echo "usage: $0 cuda|metal|vulkan|cpu [PYTHON]" >&2; exit 2 ;;
esac
if [ -z "$python" ]; then
  exe="$(command -v localr1 || true)"
  [ -n "$exe" ] || { echo "localr1 is not on PATH; pass the environment's python as the second argument" >&2; exit 1; }
  python="$(head -1 "$(readlink -f "$exe")" | sed 's/^#!//')"
fi
version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
echo "Rebuilding llama-cpp-python $version for $backend in $("$python" -c 'import sys; print(sys.prefix)')"
CMAKE_ARGS="$flags" "$python" -m pip install --force-reinstall --no-cache-dir --no-deps \
  "llama-cpp-python==$version"
"$python" -c 'import llama_cpp.llama_cpp as l; print("GPU offload:", bool(l.llama_supports_gpu_offload()))'
