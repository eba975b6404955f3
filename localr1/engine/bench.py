"""Prefill and decode speed through localr1's own streaming path, and llama.cpp's llama-bench beside it.

``run`` feeds a prompt of a given token length through ``engine.stream`` (the path ``ask`` and ``chat``
use) and generates a fixed number of tokens (end-of-stream biased off), repeated after one uncounted
warm-up run, with the KV cache cleared between runs. It samples as ``ask`` does (R1's temperature 0.6 and
top-p 0.95, seeded) unless told otherwise, and reports the time spent choosing tokens. ``llama_bench`` runs llama.cpp's own benchmark with the same model, threads, batch, GPU layers
and flash-attention setting, for the ratio localr1 / llama.cpp.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localr1.engine.backend import init_backend, weight_repacking
from localr1.engine.speculative import DraftStats
from localr1.errors import LocalR1Error, UsageError
from localr1.events import Done
from localr1.text.prompt import Prompt
from localr1.text.sampling import Sampling

FILLER = "The quick brown fox jumps over the lazy dog while the old lighthouse keeper counts prime numbers. "


@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def summary(self, digits: int = 2) -> dict[str, float]:
        if not self.values:
            return {"min": 0.0, "median": 0.0, "max": 0.0}
        return {
            "min": round(min(self.values), digits),
            "median": round(statistics.median(self.values), digits),
            "max": round(max(self.values), digits),
        }


@dataclass
class BenchResult:
    prompt_tokens: int
    gen_tokens: int
    prefill_tps: Series = field(default_factory=Series)
    decode_tps: Series = field(default_factory=Series)
    ttft_s: Series = field(default_factory=Series)
    sample_ms: Series = field(default_factory=Series)  # per generated token
    speculative: Any = None  # DraftStats summed over the counted runs (None: speculation off)

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
            "prefill_tokens_per_s": self.prefill_tps.summary(),
            "decode_tokens_per_s": self.decode_tps.summary(),
            "time_to_first_token_s": self.ttft_s.summary(),
            "sample_ms_per_token": self.sample_ms.summary(digits=3),
            **({"speculative": self.speculative.to_dict()} if self.speculative is not None else {}),
        }


def prompt_of(engine, n_tokens: int) -> Prompt:
    """Plain text that tokenizes to exactly ``n_tokens`` (BOS included when the model adds one)."""
    add_bos = engine.info.chat_format.add_bos
    words = (FILLER * (n_tokens // 8 + 2)).split(" ")
    lo, hi = 0, len(words)
    while lo < hi:  # the longest prefix of words that fits
        mid = (lo + hi + 1) // 2
        if len(engine.tokenize(" ".join(words[:mid]), add_bos=add_bos)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    while len(engine.tokenize(text, add_bos=add_bos)) < n_tokens:
        text += "."
    if len(engine.tokenize(text, add_bos=add_bos)) != n_tokens:
        text = text[:-1]
    return Prompt(text=text, opens_thinking=False, add_bos=add_bos)


def run(
    engine, *, n_prompt: int = 512, n_gen: int = 128, reps: int = 3, sampling: Sampling | None = None
) -> BenchResult:
    if n_prompt < 1 or n_gen < 2 or reps < 1:
        raise UsageError("--prompt must be at least 1, --gen at least 2 and --reps at least 1")
    if n_prompt + n_gen > engine.info.n_ctx:
        raise UsageError(f"--prompt + --gen ({n_prompt + n_gen}) exceed the context ({engine.info.n_ctx})")
    eos = {t: float("-inf") for t in engine.end_tokens()}
    sampling = sampling or Sampling(seed=1)  # what ask runs: R1's temperature and top-p
    sampling = Sampling(**{**sampling.__dict__, "max_tokens": n_gen, "logit_bias": {**sampling.logit_bias, **eos}})
    prompt = prompt_of(engine, n_prompt)
    result = BenchResult(len(engine.tokenize(prompt.text, add_bos=prompt.add_bos)), n_gen)
    for rep in range(reps + 1):  # the first run warms up (graph allocation, caches) and is not counted
        engine.reset()
        done = None
        for event in engine.stream(prompt, sampling):
            if isinstance(event, Done):
                done = event
        if done is None or done.usage.completion_tokens != n_gen:
            raise LocalR1Error("the benchmark run stopped early")
        t = done.timings
        if rep == 0:
            continue
        result.prefill_tps.values.append(t.prefill_tps)
        result.decode_tps.values.append(t.decode_tps)
        result.ttft_s.values.append(t.prefill_s)
        result.sample_ms.values.append(t.sample_ms / max(t.decode_tokens, 1))
        if t.speculative is not None:
            total = result.speculative or DraftStats(mode=t.speculative.mode)
            total.drafted += t.speculative.drafted
            total.accepted += t.speculative.accepted
            result.speculative = total
    return result


def find_llama_bench(explicit: str | None = None) -> Path:
    if explicit is not None:  # the user named one: that one or an error, no searching elsewhere
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return Path(explicit)
        raise LocalR1Error(f"--llama-bench {explicit}: no such executable")
    candidates = [os.environ.get("LOCALR1_LLAMA_BENCH"), shutil.which("llama-bench")]
    here = Path(__file__).resolve().parents[2] / "benchmarks" / ".cache"
    candidates += [str(p) for p in sorted(here.glob("*/build/bin/llama-bench"))]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise LocalR1Error(
        "llama-bench was not found",
        hint="Build it from the same llama.cpp: bash benchmarks/build_llama_bench.sh "
        "(then LOCALR1_LLAMA_BENCH=path, or pass --llama-bench PATH).",
    )


def llama_bench(
    binary: Path,
    model: Path,
    *,
    n_prompt: int,
    n_gen: int,
    reps: int,
    threads: int,
    n_gpu_layers: int | None,
    n_batch: int,
    flash_attn: bool | None,
    overrides: tuple[tuple[str, str], ...] = (),
    mlock: bool = False,
) -> dict[str, list[float]]:
    """llama.cpp's own figures (tokens/s of each repetition) for the same settings and the same work:
    pp over an empty context, and tg at a depth of ``n_prompt`` tokens, where localr1's decode runs too
    (llama-bench's plain tg starts from an empty context, where attention is cheaper). An offload plan's
    tensor placement is passed on as ``-ot`` rules."""
    ngl = 999 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
    common = [
        "-m", str(model), "-r", str(reps), "-t", str(threads), "-ngl", str(ngl),
        "-b", str(n_batch), "-ub", str(n_batch), "-o", "json",
    ]  # fmt: skip
    if flash_attn is not None:
        common += ["-fa", "1" if flash_attn else "0"]

    if not weight_repacking(init_backend()):  # as localr1 loads it (an AMX CPU: no repacked weights)
        common += ["--repack", "0"]
    if overrides:
        if any(c in pattern for pattern, _ in overrides for c in ",;="):
            raise LocalR1Error("this plan's tensor rules cannot be written as llama-bench -ot arguments")
        common += ["-ot", ";".join(f"{pattern}={device}" for pattern, device in overrides)]
    if mlock:
        common += ["-lm", "mmap+mlock"]
    runs = {
        "prefill": ["-p", str(n_prompt), "-n", "0"],
        "decode": ["-p", "0", "-n", str(n_gen), "-d", str(n_prompt)],
    }
    out = {}
    for kind, args in runs.items():
        proc = subprocess.run([str(binary), *common, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LocalR1Error(f"llama-bench failed: {last[0]}", hint="Run it by hand to see why: " + " ".join(
                [str(binary), *common, *args]))  # fmt: skip
        try:
            out[kind] = [float(x) for x in json.loads(proc.stdout)[0]["samples_ts"]]
        except (ValueError, LookupError, TypeError) as exc:
            raise LocalR1Error(f"llama-bench printed something other than its JSON report ({exc})") from None
    return out


def side_by_side(run_ours, run_theirs, *, rounds: int = 1) -> tuple[BenchResult, dict[str, list[float]]]:
    """llama-bench and localr1 in turns, llama-bench first and last (A-B-A, or A-B-A-B-A with two rounds):
    a machine that speeds up or slows down during the measurement (turbo, thermals, a neighbour's load)
    moves both sides alike. The repetitions of each side are pooled."""
    theirs = run_theirs()
    ours: BenchResult | None = None
    for _ in range(rounds):
        result = run_ours()
        if ours is None:
            ours = result
        else:
            for name in ("prefill_tps", "decode_tps", "ttft_s"):
                getattr(ours, name).values.extend(getattr(result, name).values)
        more = run_theirs()
        theirs = {kind: theirs[kind] + more[kind] for kind in theirs}
    assert ours is not None
    return ours, theirs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
