"""The planner's CPU decode estimate against llama.cpp's llama-bench, on real-size models, at several depths.

For each model file and context depth: llama-bench's tg (``-p 0 -n N -d DEPTH``, the threads, flash
attention and weight repacking the engine uses) and the planner's estimate for that file on this machine
at that depth (its kernel speeds, measured afresh just before each run), with the error. The models are real-size
random ones (benchmarks/random_model.py): llama.cpp's kernels do not look at the values.

    python benchmarks/cpu_estimate.py MODEL.gguf [MODEL.gguf ...] [--depths 0,4096] [--tokens 32] [--reps 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def llama_bench_tg(binary: str, model: Path, depth: int, tokens: int, reps: int, threads: int) -> float:
    from localr1.engine.backend import init_backend, weight_repacking

    cmd = [binary, "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(tokens), "-d", str(depth)]
    cmd += ["-r", str(reps), "-fa", "1", "-o", "json"]
    if not weight_repacking(init_backend()):
        cmd += ["--repack", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return statistics.median(float(x) for x in json.loads(proc.stdout)[0]["samples_ts"])


def fresh_kernels(hw, threads: int):
    """``hw`` with its CPU kernel speeds measured now (the cached ones may be from a quieter hour)."""
    from localr1.engine.cpu_speed import measure
    from localr1.machine.hardware import with_cpu_speed

    return with_cpu_speed(hw, measure(threads) or {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--depths", default="0,4096")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--llama-bench", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from localr1.engine.bench import find_llama_bench
    from localr1.fit.candidates import from_file
    from localr1.fit.capacity import step_share
    from localr1.fit.planner import decode_speed_at
    from localr1.machine.hardware import physical_cores, probe

    binary = str(find_llama_bench(args.llama_bench))
    threads = physical_cores()
    rows = []
    for path in args.models:
        c = from_file(path)
        for depth in (int(d) for d in args.depths.split(",")):
            hw = fresh_kernels(probe(), threads)  # measured next to the run it is compared with, not cached
            estimate = decode_speed_at(c, hw, depth)
            measured = llama_bench_tg(binary, path, depth, args.tokens, args.reps, threads)
            rows.append(
                {"model": path.name, "depth": depth, "estimate": round(estimate, 3), "llama_bench_tg": round(measured, 3),
                 "error": round(estimate / measured - 1, 4), "kernels_gbs": hw.cpu_decode_gbs,
                 "step_share": round(step_share(hw), 4)}
            )  # fmt: skip
            if not args.json:
                r = rows[-1]
                print(f"{r['model']:40s} depth {depth:6d}  estimate {estimate:6.2f}  llama-bench {measured:6.2f}  "
                      f"error {r['error'] * 100:+.1f}%  (step share {r['step_share']:.3f})", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps({"cpu": hw.cpu, "threads": threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
