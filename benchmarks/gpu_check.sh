#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU and nvcc but no internet (the `device` machine): builds
# localr1's CUDA backend with `localr1 backend install cuda`, makes real-size random models, and writes every
# figure into one JSON file:
#   - `localr1 bench --compare` (R1 sampling, prefill and decode) against llama-bench built with CUDA from the
#     same llama.cpp source, per model;
#   - the planner's estimate (`localr1 plan --json`: VRAM and decode tokens/s) against what ran: the bench's
#     measured decode rate, and the GPU memory nvidia-smi saw in use while it ran;
#   - per device, the bytes the planner counts against llama.cpp's own buffers (its log of the real load:
#     weights, KV cache, compute) and what nvidia-smi saw the load take (benchmarks/placement_check.py);
#   - `serve --parallel 4` against llama-server with 4 slots from the same source (benchmarks/serve.py);
#   - offload mode's MoE placement against llama.cpp's --n-cpu-moe at the same GPU memory, on a random
#     deepseek2 MoE planned for a GPU smaller than it (--vram), both decoded the same way.
#
#   bash benchmarks/gpu_check.sh --prepare DIR   # here, with internet: DIR gets the wheels and the sdist
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out FILE] [--models "r1:1.5b r1:7b"] [--arch 9.0]
#   bash benchmarks/gpu_check.sh --dry-run       # on the CPU here: the same steps, with the tiny R1 model,
#                                                # the installed build and llama-bench for the CPU; the
#                                                # placement checks on Vulkan (lavapipe) where its build is
# Within 10 minutes on the device machine: the CUDA build is the long part (-j of every core).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
dry=0 wheels="" out="" models="r1:1.5b r1:7b" arch="" prepare=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --wheels) wheels="$2"; shift ;;
    --out) out="$2"; shift ;;
    --models) models="$2"; shift ;;
    --arch) arch="$2"; shift ;;
    --prepare) prepare="$2"; shift ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "== $*" >&2; }

if [ -n "$prepare" ]; then  # the wheels localr1 and the CUDA build need, for a machine without internet
  mkdir -p "$prepare"
  python3 -m pip download --quiet -d "$prepare" "$root[dev]" nvidia-cublas scikit-build-core cmake ninja >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$prepare" \
    "llama-cpp-python==$(python3 -c 'import tomllib,re;d=tomllib.load(open("'"$root"'/pyproject.toml","rb"));print(next(re.split("[=<>~]=",x)[1].split(",")[0] for x in d["project"]["dependencies"] if x.startswith("llama-cpp-python")))')" >&2
  echo "$prepare"
  exit 0
fi

work="${TMPDIR:-/tmp}/localr1-gpu-check"
mkdir -p "$work"
out="${out:-$work/gpu_check.json}"
start=$SECONDS
if [ "$dry" = 1 ]; then
  py="${PYTHON:-$root/.venv/bin/python}"
  [ -x "$py" ] || { echo "gpu_check.sh --dry-run: no $py (make the venv of README.md first)" >&2; exit 1; }
  localr1="$(dirname "$py")/localr1"
  models="tiny"
else
  # a venv of its own, from the carried wheels (no index: the machine has no internet)
  if [ -n "$wheels" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheels"; fi
  [ -x "$work/venv/bin/python" ] || python3 -m venv "$work/venv"
  py="$work/venv/bin/python"
  localr1="$work/venv/bin/localr1"
  log "installing localr1 ($((SECONDS - start)) s)"
  "$py" -m pip install --quiet -e "$root" >&2
  log "building the CUDA backend ($((SECONDS - start)) s)"
  export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
  build_start=$SECONDS
  "$localr1" backend install cuda ${arch:+--cuda-arch "$arch"} >&2
  build_s=$((SECONDS - build_start))
fi

# llama-bench, llama-server and llama-batched-bench from the same llama.cpp source, for the same backend. On
# the GPU they are built with dynamic backends and no CUDA of their own, and load the CUDA backend localr1
# just built (the same source, flags and library): compiling CUDA's kernels a second time would take a
# third of the 10 minutes.
bench_flags=""
[ "$dry" = 1 ] || bench_flags="-DGGML_BACKEND_DL=on -DGGML_NATIVE=off -DGGML_CUDA=off"
log "llama-bench and llama-server ($((SECONDS - start)) s)"
llama_bench="$(CMAKE_ARGS="$bench_flags" bash "$here/build_llama_bench.sh" "$py")"
llama_server="$(CMAKE_ARGS="$bench_flags" bash "$here/build_llama_bench.sh" "$py" llama-server)"
CMAKE_ARGS="$bench_flags" bash "$here/build_llama_bench.sh" "$py" llama-batched-bench >/dev/null
if [ "$dry" != 1 ]; then  # the CUDA backend beside the tools (ggml looks there), its CUDA libraries on the path
  lib="$("$py" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib")')"
  ln -sf "$lib/libggml-cuda.so" "$(dirname "$llama_bench")/libggml-cuda.so"
  cuda_dirs="$("$py" -c 'import json, sys; print(":".join(json.load(open(sys.argv[1]))["lib_dirs"]))' "$lib/localr1-cuda.json")"
  export LD_LIBRARY_PATH="$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# where the placement checks run: this build, or in the dry mode the Vulkan build on lavapipe if it is made
# (tests/build_vulkan_backend.sh), so that a GPU device's code paths run before a GPU is lent
place_env=(env)
vk_site="${LOCALR1_VULKAN_DIR:-$HOME/.cache/localr1-test-models/vulkan}/site"
if [ "$dry" = 1 ] && compgen -G "$vk_site/.built-*-vulkan-rpc" >/dev/null; then
  place_env=(env "PYTHONPATH=$vk_site" GGML_VK_VISIBLE_DEVICES=0)
fi
place_bench=()
[ "$dry" = 1 ] || place_bench=(--llama-bench "$llama_bench")
model_path() {  # a catalog shape with random weights, or one of the test models (tests/model_factory.py)
  case "$1" in
    tiny) "$py" -c "import sys; sys.path.insert(0, '$root/tests'); import model_factory; print(model_factory.tiny_r1_path())" ;;
    moe) "$py" -c "import sys; sys.path.insert(0, '$root/tests'); import model_factory; print(model_factory.big_moe_path())" ;;
    *) "$py" "$here/random_model.py" "$1" --out "$work/models" ;;
  esac
}

results="$work/results.jsonl"
: > "$results"
first=""
for model in $models; do
  log "model $model ($((SECONDS - start)) s)"
  path="$(model_path "$model")"
  first="${first:-$path}"
  log "plan and bench $model ($((SECONDS - start)) s)"
  plan="$("$localr1" plan "$path" --json 2>/dev/null || echo null)"
  smi_log="$work/smi-$$.txt"
  : > "$smi_log"
  if command -v nvidia-smi >/dev/null; then  # the GPU memory in use while the bench runs (its peak is kept)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$smi_log" 2>/dev/null &
    smi_pid=$!
  fi
  bench="$("$localr1" bench "$path" --compare --llama-bench "$llama_bench" --prompt 512 --gen 128 --reps 3 --json)"
  [ -n "${smi_pid:-}" ] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null || true
  peak="$(sort -n "$smi_log" | tail -1)"
  log "placement $model ($((SECONDS - start)) s)"
  placement="$("${place_env[@]}" "$py" "$here/placement_check.py" "$path" --json "${place_bench[@]}")"
  "$py" - "$model" "$path" "$peak" "$plan" "$bench" "$placement" >> "$results" <<'EOF'
import json, sys
model, path, peak, plan, bench, placement = sys.argv[1:7]
plan = json.loads(plan) if plan.strip() not in ("", "null") else None
print(json.dumps({"model": model, "file": path, "plan": plan, "bench": json.loads(bench),
                  "placement": json.loads(placement),
                  "nvidia_smi_peak_mib": int(peak) if peak.strip().isdigit() else None}))
EOF
done

# serve --parallel 4 against llama-server with 4 slots (the first model: the one most users run)
log "serve --parallel 4 against llama-server ($((SECONDS - start)) s)"
tokens=128
[ "$dry" = 1 ] && tokens=32
"$py" "$here/serve.py" "$first" --streams 4 --tokens "$tokens" --reps 1 --llama-server "$llama_server" --json \
  > "$work/serve.json"

# offload mode's MoE placement against --n-cpu-moe on a GPU capped at 1200 MiB: the planner's 600 MiB reserve,
# the hot tensors and KV cache (0.4 GiB: the compute buffer of R1's 152k-token output), 2 of 7 layers' experts
log "MoE placement against --n-cpu-moe ($((SECONDS - start)) s)"
moe="$(model_path moe)"
moe_fa=auto  # on lavapipe, flash attention with this model's small MLA heads (48/32) crashes llama.cpp's decode
[ "${#place_env[@]}" -gt 1 ] && moe_fa=off
"${place_env[@]}" "$py" "$here/placement_check.py" "$moe" --vram 1200MiB --ctx 4096 --flash-attn "$moe_fa" --json \
  "${place_bench[@]}" \
  > "$work/moe.json"

"$py" - "$results" "$out" "$dry" "${build_s:-}" "$SECONDS" "$work/serve.json" "$work/moe.json" <<'EOF'
import json, platform, subprocess, sys
results, out, dry, build_s, total_s, serve, moe = sys.argv[1:8]
rows = [json.loads(line) for line in open(results) if line.strip()]
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except OSError:
    smi = None
doc = {"dry_run": dry == "1", "machine": platform.node(), "gpu": smi or None,
       "cuda_build_s": int(build_s) if build_s else None, "total_s": int(total_s), "models": rows,
       "serve": json.load(open(serve)), "moe_offload": json.load(open(moe))}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
print(out)
EOF
log "done in $((SECONDS - start)) s: $out"
