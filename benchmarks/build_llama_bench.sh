#!/usr/bin/env bash
# Build llama.cpp's own llama-bench (or another of its tools, e.g. llama-server) from the source inside the
# installed llama-cpp-python's sdist, so that `localr1 bench --compare` and benchmarks/serve.py measure
# against the very same llama.cpp. Cached in benchmarks/.cache/.
#
#   bash benchmarks/build_llama_bench.sh [PYTHON] [TARGET]   # prints the path of the binary (default llama-bench)
#
# Extra CMake flags (e.g. -DGGML_CUDA=on for a GPU build) can be passed in CMAKE_ARGS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-python3}"
target="${2:-llama-bench}"
version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
cache="$here/.cache/llama-cpp-python-$version"
if [ -n "${CMAKE_ARGS:-}" ]; then  # another backend: another build folder (the source is shared)
  variant="$(printf '%s' "$CMAKE_ARGS" | md5sum | cut -c1-8)"
  src_cache="$cache"
  cache="$cache-$variant"
fi
bin="$cache/build/bin/$target"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
src="${src_cache:-$cache}/src"
if [ ! -d "$src" ]; then
  mkdir -p "${src_cache:-$cache}"
  "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "${src_cache:-$cache}" >&2
  mkdir -p "$src"
  tar -xzf "${src_cache:-$cache}"/llama_cpp_python-*.tar.gz -C "$src" --strip-components=1
fi
cmake -S "$src/vendor/llama.cpp" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF ${CMAKE_ARGS:-} >&2
cmake --build "$cache/build" --target "$target" -j "$(nproc 2>/dev/null || echo 2)" >&2
echo "$bin"
