#!/usr/bin/env bash
# localr1's CUDA build, made as a user makes it (`localr1 backend install cuda`: NVIDIA's wheels for what the
# machine lacks, then llama-cpp-python rebuilt with dynamic backends), in a venv of its own kept in
# ~/.cache/localr1-test-models/cuda/venv for tests/integration/test_cuda_build.py (marked slow). Needs nvcc;
# no GPU. About 30 minutes on a 2-core machine for one architecture (sm_90 by default).
#
#   bash tests/build_cuda_backend.sh [ARCH]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOCALR1_TEST_MODELS:-$HOME/.cache/localr1-test-models}/cuda"
venv="$cache/venv"
if [ -f "$venv/lib/python3"*/site-packages/llama_cpp/lib/localr1-cuda.json ] 2>/dev/null; then echo "$venv"; exit 0; fi
command -v nvcc >/dev/null || { echo "no nvcc on PATH: the CUDA build needs the compiler" >&2; exit 1; }
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet -e "$root" >&2
start=$SECONDS
"$venv/bin/localr1" backend install cuda --cuda-arch "${1:-9.0}" >&2
echo "== CUDA build: $((SECONDS - start)) s" >&2
echo "$venv"
