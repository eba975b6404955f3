#!/usr/bin/env bash
# Build a second llama-cpp-python with llama.cpp's Vulkan backend, for the tests that need a real non-CPU
# device on a machine without a GPU: Mesa's lavapipe ("llvmpipe") runs Vulkan on the CPU. It has ggml's RPC
# backend too (-DGGML_RPC=on), for the multi-machine tests (workers on 127.0.0.1).
#
#   bash tests/build_vulkan_backend.sh [PYTHON]
#
# It installs llama-cpp-python (the version the given Python's environment has) into
# ~/.cache/localr1-test-models/vulkan/site (LOCALR1_VULKAN_DIR overrides the folder), which the Vulkan
# tests put first on PYTHONPATH of the localr1 they start. Once built it is kept: running this again does
# nothing. Takes 15-25 minutes on 2 cores.
#
# Needs Debian's mesa-vulkan-drivers, glslc, spirv-headers and libvulkan-dev (installed with apt-get when
# run as root), and Vulkan headers newer than Debian 12's 1.3.239 (this llama.cpp uses VK_EXT_layer_settings):
# those of Debian 13's libvulkan-dev, fetched from Debian's archive into the same folder (apt-get download
# with the trixie suite in a private apt state folder; nothing is installed system-wide from trixie).
set -euo pipefail
python="${1:-python3}"
dir="${LOCALR1_VULKAN_DIR:-$HOME/.cache/localr1-test-models/vulkan}"
site="$dir/site"
version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
marker="$site/.built-$version-vulkan-rpc"
if [ -f "$marker" ]; then
  echo "the Vulkan build of llama-cpp-python $version is in $site"
  exit 0
fi
mkdir -p "$dir"

need=()
command -v glslc >/dev/null || need+=(glslc)
[ -n "$(ls /usr/share/vulkan/icd.d/lvp_icd* 2>/dev/null)" ] \
  || need+=(mesa-vulkan-drivers)
[ -e /usr/include/spirv/unified1/spirv.hpp ] || need+=(spirv-headers)
[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so ] || [ -n "$(ls /usr/lib/*/libvulkan.so 2>/dev/null)" ] \
  || need+=(libvulkan-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

headers="$dir/vulkan-headers"
if [ ! -e "$headers/usr/include/vulkan/vulkan_core.h" ] \
   || ! grep -q VK_EXT_layer_settings "$headers/usr/include/vulkan/vulkan_core.h"; then
  state="$dir/apt-trixie"
  mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/etc"
  cat >"$state/etc/trixie.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  opts=(-o "Dir::State=$state" -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state"
        -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$state/etc" -o "Debug::NoLocking=1"
        -o "APT::Architecture=amd64" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq
  (cd "$state" && apt-get "${opts[@]}" download libvulkan-dev >/dev/null)
  rm -rf "$headers"
  dpkg-deb -x "$state"/libvulkan-dev_*.deb "$headers"
fi

echo "building llama-cpp-python $version with Vulkan into $site (15-25 minutes)"
rm -rf "$site"
# --no-cache-dir: pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS, so it would hand back the CPU
# build (and the CPU venv would get this one)
CMAKE_ARGS="-DGGML_VULKAN=on -DGGML_RPC=on -DVulkan_INCLUDE_DIR=$headers/usr/include -DLLAMA_BUILD_TESTS=off" \
  "$python" -m pip install --no-cache-dir --no-deps --target "$site" "llama-cpp-python==$version" \
  >"$dir/build.log" 2>&1 || { tail -30 "$dir/build.log" >&2; exit 1; }
touch "$marker"
echo "built: $site (log: $dir/build.log)"
