"""``localr1 bench``: prefill and decode speed through localr1, optionally beside llama.cpp's llama-bench."""

from __future__ import annotations

import json
import sys

import typer

from localr1.cli.helptext import command_help
from localr1.cli.options import (
    DraftOpt,
    GpuLayersOpt,
    JsonOpt,
    ModelOpt,
    SpeculateOpt,
    ThreadsOpt,
    load_request,
    one_model,
)
from localr1.cli.state import command, handle_errors
from localr1.errors import UsageError
from localr1.text.sampling import Sampling

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

HELP = """Measure prefill and decode tokens/s through localr1's own streaming path (what ask and chat use).

Decoding samples as ask does by default (R1's temperature 0.6 and top-p 0.95, seeded), and the time spent
choosing tokens is reported per token; --greedy measures argmax decoding instead.

With --compare, llama.cpp's llama-bench runs with the same model, threads, batch, GPU layers, tensor
placement and flash attention, before and after localr1's runs, and the ratio of the medians
localr1 / llama.cpp is printed (llama-bench only decodes: it chooses no tokens, so localr1's sampling
counts against localr1) (build llama-bench with benchmarks/build_llama_bench.sh, or put one on
PATH).

Speculative decoding runs as ask runs it (--speculate, default auto), and what it drafted and kept is
reported: the prompt repeats one sentence, so n-grams predict much of what the model writes; --speculate
off measures one token per step.

Examples:
$ localr1 bench
$ localr1 bench r1:7b --prompt 512 --gen 128 --reps 5 --json
$ localr1 bench ./model.gguf --compare --rounds 3
$ localr1 bench --greedy
$ localr1 bench --speculate off
"""


@command(help=command_help(HELP))
@handle_errors
def bench(
    model: str | None = typer.Argument(None, help="A catalog name or .gguf file (default: as for ask)."),
    model_option: ModelOpt = None,
    prompt: int = typer.Option(512, "--prompt", help="Prompt length in tokens."),
    gen: int = typer.Option(128, "--gen", help="Tokens to generate."),
    reps: int = typer.Option(3, "--reps", help="Repetitions (min / median / max are reported)."),
    compare: bool = typer.Option(False, "--compare", help="Also run llama.cpp's llama-bench; print ratios."),
    rounds: int = typer.Option(1, "--rounds", help="With --compare: turns of localr1 between llama-bench runs."),
    llama_bench_path: str | None = typer.Option(None, "--llama-bench", help="The llama-bench binary."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax decoding instead of ask's R1 sampling."),
    _r1_sampling: bool = typer.Option(False, "--r1-sampling", hidden=True, help="The default now."),
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    flash_attn: str = typer.Option("auto", "--flash-attn", help="on, off or auto (llama.cpp decides)."),
    speculate: SpeculateOpt = None,
    draft: DraftOpt = None,
    json_out: JsonOpt = False,
) -> None:
    model = one_model(model, model_option)
    from localr1.engine import bench as bench_mod
    from localr1.loader import load_engine
    from localr1.machine.hardware import machine
    from localr1.models.gguf_info import inspect_model

    if prompt < 1 or gen < 2 or reps < 1 or rounds < 1:
        raise UsageError("--prompt must be at least 1, --gen at least 2, --reps and --rounds at least 1")
    request = load_request(model, threads=threads, gpu_layers=gpu_layers, speculate=speculate, draft=draft)
    if flash_attn not in ("on", "off", "auto"):
        raise UsageError(f"--flash-attn must be on, off or auto, not {flash_attn!r}")
    fa = None if flash_attn == "auto" else flash_attn == "on"
    hw = machine()
    plan, options = _setup(request, hw, n_ctx=prompt + gen + 64, flash_attn=fa)
    path, header = plan.candidate.path, inspect_model(plan.candidate.path)
    sampling = Sampling(temperature=0.0) if greedy else Sampling(seed=1)
    loaded: list = []

    def run_ours():
        engine = load_engine(path, header, options)  # as ask and chat load it
        try:
            measured = bench_mod.run(engine, n_prompt=prompt, n_gen=gen, reps=reps, sampling=sampling)
            loaded.append(engine.info)
        finally:
            engine.close()  # before llama-bench runs: both would not fit a GPU that holds one
        return measured

    theirs: dict[str, list[float]] = {}
    if compare:
        binary = bench_mod.find_llama_bench(llama_bench_path)

        def run_theirs():
            return bench_mod.llama_bench(
                binary, path, n_prompt=prompt, n_gen=gen, reps=reps, threads=options.n_threads,
                n_gpu_layers=plan.n_gpu_layers, n_batch=options.n_batch, flash_attn=fa, overrides=plan.overrides,
                mlock=plan.mlock,
            )  # fmt: skip

        result, theirs = bench_mod.side_by_side(run_ours, run_theirs, rounds=rounds)
    else:
        result = run_ours()
    info = loaded[0]
    out = {
        "model": plan.label,
        "path": str(path),
        "quant": info.quant,
        "threads": info.n_threads,
        "n_gpu_layers": info.n_gpu_layers,
        "n_batch": info.extra["n_batch"],
        "flash_attn": flash_attn,
        "sampling": "greedy" if greedy else "r1",
        "reps": reps,
        "rounds": rounds if compare else 1,
        **result.to_dict(),
    }
    if compare:
        out.update(_compared(result, theirs, binary, rounds))
    if json_out:
        out["hardware"] = hw.to_dict()
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    sys.stdout.write("\n".join(_text(out, plan.label, info, result, gen=gen, greedy=greedy, hw=hw)) + "\n")


def _setup(request, hw, *, n_ctx: int, flash_attn: bool | None):
    """The plan for the model (it must be on disk) and the engine options ask would load it with."""
    from dataclasses import replace

    from localr1.config import load_config
    from localr1.engine.llama_cpp import DEFAULT_BATCH
    from localr1.loader import EngineOptions, plan_for, speculation
    from localr1.machine.cpu import physical_cores

    config = load_config()
    plan = plan_for(replace(request, ctx=n_ctx), hw, config, prefer_local=True)
    if plan.candidate.path is None:
        raise UsageError(f"{plan.label} is not downloaded", hint=f"localr1 pull {plan.label}")
    mode, draft, draft_layers = speculation(
        request, config, plan, plan.label, lambda text: sys.stderr.write(text + "\n")
    )
    options = EngineOptions(
        n_ctx=n_ctx,
        n_threads=request.threads or config.threads or physical_cores(),
        n_gpu_layers=plan.n_gpu_layers,
        debug=request.debug,
        tensor_overrides=plan.overrides,
        mlock=plan.mlock,
        n_batch=min(DEFAULT_BATCH, n_ctx),
        flash_attn=flash_attn,
        speculate=mode,
        draft=draft,
        draft_gpu_layers=draft_layers,
    )
    return plan, options


def _compared(result, theirs: dict[str, list[float]], binary, rounds: int) -> dict:
    """llama-bench's figures and the ratios localr1 / llama.cpp, for the JSON and text reports."""
    from localr1.engine import bench as bench_mod

    ours_pp, ours_tg = result.prefill_tps.summary()["median"], result.decode_tps.summary()["median"]
    their_pp, their_tg = bench_mod.median(theirs["prefill"]), bench_mod.median(theirs["decode"])
    return {
        "llama_bench": {
            "binary": str(binary),
            "sampling": "none (llama-bench decodes without choosing tokens)",
            "runs": f"{rounds + 1}, taking turns with localr1's {rounds}; repetitions pooled",
            "prefill_tokens_per_s": round(their_pp, 2),
            "decode_tokens_per_s": round(their_tg, 2),
            "prefill_samples": [round(x, 2) for x in theirs["prefill"]],
            "decode_samples": [round(x, 2) for x in theirs["decode"]],
        },
        "ratio": {
            "prefill": round(ours_pp / their_pp, 3) if their_pp else None,
            "decode": round(ours_tg / their_tg, 3) if their_tg else None,
        },
    }


def _text(out: dict, label: str, info, result, *, gen: int, greedy: bool, hw) -> list[str]:
    from localr1.cli.machine import hardware_lines

    sampling = "greedy" if greedy else "R1 sampling (temperature 0.6, top-p 0.95)"
    lines = [
        f"{label} ({info.quant}) · {info.n_threads} threads · {info.n_gpu_layers} GPU layers · "
        f"batch {info.extra['n_batch']} · flash attention {out['flash_attn']} · {sampling}"
    ]
    lines.append(f"{'':22} {'min':>9} {'median':>9} {'max':>9}")
    for name, key in (
        ("prefill tokens/s", "prefill_tokens_per_s"),
        ("decode tokens/s", "decode_tokens_per_s"),
        ("first token (s)", "time_to_first_token_s"),
        ("sampling ms/token", "sample_ms_per_token"),
    ):
        s = out[key]
        lines.append(f"{name:22} {s['min']:>9} {s['median']:>9} {s['max']:>9}")
    runs = len(result.decode_tps.values)
    lines.append(f"({result.prompt_tokens}-token prompt, {gen} generated, {runs} runs)")
    if spec := out.get("speculative"):
        rate = f"{spec['acceptance']:.0%}" if spec["drafted"] else "-"
        lines.append(
            f"speculative ({spec['mode']}): {spec['accepted']:,} of {spec['drafted']:,} drafted tokens kept ({rate})"
        )
    if "llama_bench" in out:
        lb, r = out["llama_bench"], out["ratio"]
        lines.append(
            f"llama-bench (median)   pp{result.prompt_tokens} {lb['prefill_tokens_per_s']:.2f} tok/s · "
            f"tg{gen} @ d{result.prompt_tokens} {lb['decode_tokens_per_s']:.2f} tok/s  (taking turns with localr1)"
        )
        lines.append(
            f"localr1 / llama.cpp    prefill {r['prefill']} · decode {r['decode']}  (medians; localr1 "
            f"{'decodes greedily' if greedy else 'samples as ask does'}, llama-bench chooses no tokens)"
        )
    return [*lines, "", *hardware_lines(hw)]
