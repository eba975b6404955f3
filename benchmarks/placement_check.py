"""Where the planner puts a model against where llama.cpp puts it, and offload mode against --n-cpu-moe.

For one model file (and optionally a smaller GPU than the one present, ``--vram``, as a user of a smaller card
would have):

* the plan, as ``localr1 plan MODEL --json`` gives it: GPU layers, tensor rules, the bytes it counts for the
  GPU and for RAM;
* that placement loaded for real: llama.cpp's own buffers per device (weights, KV cache, compute, from its
  log), and on an NVIDIA GPU the memory ``nvidia-smi`` sees the load take; then decode tokens/s with R1
  sampling through the engine ``ask`` uses (``localr1 bench``'s measurement);
* for a mixture-of-experts model on a build with a GPU device: llama.cpp's own ``--n-cpu-moe N`` placement
  (the routed experts of the first N layers in RAM, everything else on the GPU) with the smallest N whose
  buffers fit the same GPU memory, loaded and decoded the same way; with ``--llama-bench`` both placements
  are also run by llama-bench (``-ot`` rules and ``-ncmoe N``).

Without a GPU device (a CPU build) the plan is checked against the CPU's buffers and the MoE comparison is
reported as skipped, with the reason.

    python benchmarks/placement_check.py MODEL.gguf [--vram 2GiB] [--ctx 4096] [--tokens 64] [--reps 2]
        [--flash-attn auto|on|off] [--llama-bench PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
# llama.cpp's --n-cpu-moe rule for layer i (common/common.h: llm_ffn_block_regex(i, LLM_FFN_EXPS_REGEX))
N_CPU_MOE = r"blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def plan_of(model: Path, ctx: int, vram: str | None, gpus: bool) -> dict:
    cmd = [sys.executable, "-m", "localr1", "plan", str(model), "--ctx", str(ctx), "--json"]
    if vram:  # this machine's GPU capped at that (without a GPU device: a simulated one, for the plan only)
        cmd += ["--vram", vram] + (["--gpu", "detected"] if gpus else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"localr1 plan failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def rules_of(plan: dict) -> list[tuple[str, str]]:
    return [tuple(rule.rsplit("=", 1)) for rule in plan.get("tensor_overrides", [])]


def smi_used_mib() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)  # fmt: skip
    values = [int(v) for v in out.stdout.split() if v.strip().isdigit()]
    return sum(values) if out.returncode == 0 and values else None


def load(model: Path, *, ctx: int, n_gpu_layers: int, rules: list, flash_attn: bool | None) -> tuple:
    """The engine with this placement, and llama.cpp's buffers per device as its log of the load gives them."""
    from localr1.engine.llama_cpp import _LOG, LlamaCppEngine, buffer_sizes

    with _LOG.capture() as lines:
        engine = LlamaCppEngine(
            model, n_ctx=ctx, n_gpu_layers=n_gpu_layers, tensor_overrides=rules, flash_attn=flash_attn
        )
    return engine, {k: round(v, 2) for k, v in buffer_sizes(lines).items()}


def load_and_decode(
    model: Path, *, ctx: int, n_gpu_layers: int, rules: list, tokens: int, reps: int, flash_attn: bool | None
) -> dict:
    """Load with this placement, read llama.cpp's buffers per device, and measure decode as `bench` does."""
    from localr1.engine.bench import run

    before = smi_used_mib()
    engine, buffers = load(model, ctx=ctx, n_gpu_layers=n_gpu_layers, rules=rules, flash_attn=flash_attn)
    with engine:
        after = smi_used_mib()
        result = run(engine, n_prompt=min(512, ctx // 2), n_gen=tokens, reps=reps)
    return {
        "buffers_mib": buffers,
        "nvidia_smi_load_mib": after - before if before is not None and after is not None else None,
        "bench": result.to_dict(),
    }


def device_mib(buffers: dict[str, float], gpu: bool) -> float:
    """The MiB llama.cpp put on the GPU devices (``gpu``) or on the host (CPU and a GPU backend's host
    buffers)."""
    total = 0.0
    for key, mib in buffers.items():
        dev = key.split(":", 1)[1]
        on_host = dev.startswith("CPU") or dev.endswith("_Host")
        total += mib if on_host != gpu else 0.0
    return round(total, 1)


def gpu_devices() -> list:
    from localr1.engine.devices import list_devices

    return [d for d in list_devices() if d.is_gpu]


def n_cpu_moe_rules(n: int) -> list[tuple[str, str]]:
    return [(N_CPU_MOE.format(i=i), "CPU") for i in range(n)]


def fit_n_cpu_moe(
    model: Path, *, ctx: int, n_layer: int, cap_mib: float, flash_attn: bool | None
) -> tuple[int, dict] | None:
    """The smallest N whose --n-cpu-moe placement's GPU buffers (weights, KV, compute: llama.cpp's own log of
    a real load) fit ``cap_mib``, found by bisection; None if not even every layer's experts in RAM fit."""

    def gpu_mib(n: int) -> tuple[float, dict]:
        engine, buffers = load(model, ctx=ctx, n_gpu_layers=-1, rules=n_cpu_moe_rules(n), flash_attn=flash_attn)
        engine.close()
        return device_mib(buffers, gpu=True), buffers

    lo, hi = 0, n_layer
    top, _ = gpu_mib(hi)
    if top > cap_mib:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if gpu_mib(mid)[0] <= cap_mib:
            hi = mid
        else:
            lo = mid + 1
    return lo, gpu_mib(lo)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--vram", default=None, help="plan for this much GPU memory (e.g. 2GiB), as offload mode would")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=64, help="decoded tokens per repetition")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--llama-bench", type=Path, default=None, help="also run both placements through llama-bench")
    ap.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                    help="as ask's --flash-attn (default: llama.cpp decides per device)")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fa = {"auto": None, "on": True, "off": False}[args.flash_attn]

    from localr1.engine.bench import llama_bench
    from localr1.machine.cpu import physical_cores
    from localr1.models.gguf_info import read_gguf

    t0 = time.perf_counter()
    gpus = gpu_devices()
    plan = plan_of(args.model, args.ctx, args.vram, bool(gpus))
    ctx = plan["n_ctx"]
    rules = rules_of(plan)
    placed = plan["n_gpu_layers"] if gpus else 0
    if not gpus:  # a CPU build: a simulated GPU's rules name a device this llama.cpp does not have
        rules = []
    print(f"{args.model.name}: plan {plan['mode']}, {plan['n_gpu_layers']} GPU layers, {len(rules)} tensor rules, "
          f"ctx {ctx}", file=sys.stderr)  # fmt: skip
    ours = load_and_decode(
        args.model, ctx=ctx, n_gpu_layers=placed, rules=rules, tokens=args.tokens, reps=args.reps, flash_attn=fa
    )
    memory = plan["memory_bytes"]
    report: dict = {
        "model": args.model.name,
        "vram_cap": args.vram,
        "flash_attn": args.flash_attn,
        "gpu_devices": [f"{d.name} ({d.description})" for d in gpus],
        "plan": {k: plan[k] for k in ("mode", "n_ctx", "n_gpu_layers", "decode_tokens_per_s", "memory_bytes")},
        "localr1_placement": ours,
        "per_device": {
            "gpu": {
                "planned_mib": round(memory["gpu"] / MiB, 1) if gpus else 0.0,
                "llama_cpp_mib": device_mib(ours["buffers_mib"], gpu=True),
                "nvidia_smi_load_mib": ours["nvidia_smi_load_mib"],
            },
            # the planner's RAM figure counts the weights llama.cpp keeps mapped on the host
            "host": {
                "planned_mib": round(memory["ram"] / MiB, 1)
                if gpus
                else round((memory["ram"] + memory["gpu"]) / MiB, 1),
                "llama_cpp_mib": device_mib(ours["buffers_mib"], gpu=False),
            },
        },  # fmt: skip
        "decode_estimate_vs_measured": round(
            plan["decode_tokens_per_s"] / max(ours["bench"]["decode_tokens_per_s"]["median"], 1e-9), 3
        ),
    }
    info = read_gguf(args.model, check_data=False)
    n_expert = int(info.metadata.get(f"{info.metadata['general.architecture']}.expert_count", 0) or 0)
    if n_expert == 0:
        report["n_cpu_moe"] = {"skipped": "not a mixture-of-experts model"}
    elif not gpus:
        report["n_cpu_moe"] = {"skipped": "this llama.cpp build has no GPU device (both placements are the CPU)"}
    else:
        n_layer = int(info.metadata[f"{info.metadata['general.architecture']}.block_count"])
        cap = report["per_device"]["gpu"]["llama_cpp_mib"]  # the GPU memory localr1's placement takes
        found = fit_n_cpu_moe(args.model, ctx=ctx, n_layer=n_layer, cap_mib=cap, flash_attn=fa)
        if found is None:
            report["n_cpu_moe"] = {"skipped": f"no --n-cpu-moe N fits {cap:.0f} MiB on the GPU"}
        else:
            n, _ = found
            theirs = load_and_decode(args.model, ctx=ctx, n_gpu_layers=-1, rules=n_cpu_moe_rules(n),
                                     tokens=args.tokens, reps=args.reps, flash_attn=fa)  # fmt: skip
            ratio = ours["bench"]["decode_tokens_per_s"]["median"] / theirs["bench"]["decode_tokens_per_s"]["median"]
            report["n_cpu_moe"] = {
                "n": n,
                "gpu_mib": device_mib(theirs["buffers_mib"], gpu=True),
                "placement": theirs,
                "localr1_vs_n_cpu_moe_decode": round(ratio, 3),
            }
    if args.llama_bench:
        common = dict(n_prompt=min(512, ctx // 2), n_gen=args.tokens, reps=max(args.reps, 2),
                      threads=physical_cores(), n_batch=512, flash_attn=fa)  # fmt: skip
        report["llama_bench"] = {
            "localr1_placement": llama_bench(args.llama_bench, args.model, n_gpu_layers=placed,
                                             overrides=tuple(rules), **common),
        }  # fmt: skip
        if "n" in report.get("n_cpu_moe", {}):
            n = report["n_cpu_moe"]["n"]
            report["llama_bench"]["n_cpu_moe"] = llama_bench(
                args.llama_bench, args.model, n_gpu_layers=-1, overrides=tuple(n_cpu_moe_rules(n)), **common
            )
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        dev = report["per_device"]
        smi = dev["gpu"]["nvidia_smi_load_mib"]
        print(f"GPU  planned {dev['gpu']['planned_mib']:.0f} MiB, llama.cpp {dev['gpu']['llama_cpp_mib']:.0f} MiB"
              + ("" if smi is None else f", nvidia-smi +{smi} MiB"))  # fmt: skip
        print(f"host planned {dev['host']['planned_mib']:.0f} MiB, llama.cpp {dev['host']['llama_cpp_mib']:.0f} MiB")
        print(f"decode: estimate {plan['decode_tokens_per_s']} tok/s, measured "
              f"{ours['bench']['decode_tokens_per_s']['median']:.1f} (x{report['decode_estimate_vs_measured']})")  # fmt: skip
        moe = report["n_cpu_moe"]
        print("--n-cpu-moe: " + (moe["skipped"] if "skipped" in moe else
              f"N={moe['n']} ({moe['gpu_mib']:.0f} MiB on the GPU): localr1's placement decodes "
              f"{moe['localr1_vs_n_cpu_moe_decode']:.2f}x as fast"))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
