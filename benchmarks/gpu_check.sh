#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU and nvcc but no internet (the `device` machine): builds
# localr1's CUDA backend with `localr1 backend install cuda`, makes real-size random models, and writes every
# figure into one JSON file:
#   - `localr1 bench --compare` (R1 sampling, prefill and decode) against llama-bench built with CUDA from the
#     same llama.cpp source, per model;
#   - the planner's estimate (`localr1 plan --json`: VRAM and decode tokens/s) against what ran: the bench's
#     measured decode rate, and the GPU memory nvidia-smi saw in use while it ran.
# Not in it yet: serve --parallel 4 against llama-server, and the MoE placement against --n-cpu-moe.
#
#   bash benchmarks/gpu_check.sh --prepare DIR   # here, with internet: DIR gets the wheels and the sdist
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out FILE] [--models "r1:1.5b r1:7b"] [--arch 9.0]
#   bash benchmarks/gpu_check.sh --dry-run       # on the CPU here: the same steps, with the tiny R1 model,
#                                                # the installed build and llama-bench for the CPU
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
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
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

# llama-bench from the same llama.cpp source, for the same backend
bench_flags=""
[ "$dry" = 1 ] || bench_flags="-DGGML_CUDA=on ${arch:+-DCMAKE_CUDA_ARCHITECTURES=${arch/./}}"
log "llama-bench ($((SECONDS - start)) s)"
llama_bench="$(CMAKE_ARGS="$bench_flags" bash "$here/build_llama_bench.sh" "$py")"

results="$work/results.jsonl"
: > "$results"
for model in $models; do
  if [ "$model" = tiny ]; then
    path="$("$py" -c "import sys; sys.path.insert(0, '$root/tests'); import model_factory; print(model_factory.tiny_r1_path())")"
  else
    log "random $model ($((SECONDS - start)) s)"
    path="$("$py" "$here/random_model.py" "$model" --out "$work/models")"
  fi
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
  "$py" - "$model" "$path" "$peak" "$plan" "$bench" >> "$results" <<'EOF'
import json, sys
model, path, peak, plan, bench = sys.argv[1:6]
plan = json.loads(plan) if plan.strip() not in ("", "null") else None
bench = json.loads(bench)
print(json.dumps({"model": model, "file": path, "plan": plan, "bench": bench,
                  "nvidia_smi_peak_mib": int(peak) if peak.strip().isdigit() else None}))
EOF
done

"$py" - "$results" "$out" "$dry" "${build_s:-}" "$SECONDS" <<'EOF'
import json, platform, subprocess, sys
results, out, dry, build_s, total_s = sys.argv[1:6]
rows = [json.loads(line) for line in open(results) if line.strip()]
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except OSError:
    smi = None
doc = {"dry_run": dry == "1", "machine": platform.node(), "gpu": smi or None,
       "cuda_build_s": int(build_s) if build_s else None, "total_s": int(total_s), "models": rows}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
print(out)
EOF
log "done in $((SECONDS - start)) s: $out"
