"""How much does localr1's streaming decode loop cost beyond llama.cpp itself?

For each model and sampling setting this runs one generation through ``LlamaCppEngine.stream`` (the path
``ask`` and ``chat`` use) and reads llama.cpp's own perf counters for the same run:

* ``eval``: time inside ``llama_decode`` (what llama.cpp's "eval time" line reports);
* ``bare loop``: a loop that does nothing but choose a token + ``llama_decode``, with the same sampler as
  localr1 (an argmax for greedy, ``localr1.engine.nucleus`` for R1 sampling) and the same context;
* ``chain loop``: the same loop with llama.cpp's native sampler chain (``llama_sampler_sample``: what
  llama-cli and llama-server run for the same settings without top-k), for the R1 setting.

It prints tokens/s for localr1, for llama.cpp's eval alone, the ratio of the two (the issue's yardstick:
it includes the sampler's cost, which grows with the vocabulary), and the ratio against the bare loop,
which isolates what localr1's streaming adds. For the "before" picture it
also streams the same model through llama-cpp-python's high-level ``Llama.create_completion``.

Usage::

    python benchmarks/decode_overhead.py [--tokens 256] [--reps 3] [--json] [--model PATH ...]

Without ``--model`` it uses the test models (SmolLM2-135M, 49k vocab; a tiny random model with R1's
152k-token vocabulary), fetched or built into ``~/.cache/localr1-test-models``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from localr1.engine.llama_cpp import LlamaCppEngine  # noqa: E402
from localr1.events import Done  # noqa: E402
from localr1.text.prompt import render, user_turn  # noqa: E402
from localr1.text.sampling import Sampling  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who discovers a new prime number."
SETTINGS = {
    "greedy": dict(temperature=0.0),
    "r1-default": dict(temperature=0.6, top_p=0.95, seed=1),
}


def no_stop_bias(engine: LlamaCppEngine) -> dict[int, float]:
    return {t: float("-inf") for t in engine.end_tokens()}


def run_localr1(engine: LlamaCppEngine, n_tokens: int, setting: dict) -> dict:
    prompt = render(user_turn(PROMPT), engine.info.chat_format)
    sampling = Sampling(max_tokens=n_tokens, logit_bias=no_stop_bias(engine), **setting)
    done = None
    for event in engine.stream(prompt, sampling):
        if isinstance(event, Done):
            done = event
    assert done is not None
    t = done.timings
    intervals = t.decode_tokens - 1
    ours = intervals / t.decode_s
    eval_tps = t.llama_decode_calls / (t.llama_decode_ms / 1000)
    per_token_c = t.llama_decode_ms / t.llama_decode_calls + t.sample_ms / t.decode_tokens
    return {
        "tokens": t.decode_tokens,
        "localr1_tps": ours,
        "llama_eval_tps": eval_tps,
        "llama_eval_sample_tps": 1000 / per_token_c,
        "ratio_vs_eval": ours / eval_tps,
        "ratio_vs_eval_sample": ours / (1000 / per_token_c),
        "sample_ms_per_token": t.sample_ms / t.decode_tokens,
    }


def run_bare_loop(engine: LlamaCppEngine, n_tokens: int, setting: dict, *, native_chain: bool = False) -> float:
    """The least a program can do per token: sample + llama_decode, nothing else.

    Same context, same prompt as ``run_localr1``, and the same sampler (greedy: the engine's argmax over the
    logits; otherwise localr1.engine.nucleus), or with ``native_chain`` llama.cpp's sampler chain; what localr1
    spends beyond the first is the cost of its detokenizing, reasoning split and events.
    """
    lib = engine._lib
    prompt = render(user_turn(PROMPT), engine.info.chat_format)
    tokens = engine.tokenize(prompt.text, add_bos=prompt.add_bos)
    sampling = Sampling(max_tokens=n_tokens, logit_bias=no_stop_bias(engine), **setting)
    chain = engine._sampler(sampling)
    try:
        engine.prefill(tokens)
        buf = (lib.llama_token * 1)()
        if native_chain:
            sample = lib.llama_sampler_sample
        elif sampling.temperature <= 0:
            sample = engine._greedy(sampling)
        else:
            sample = engine._nucleus(sampling)
        decode, batch_one, ctx = lib.llama_decode, lib.llama_batch_get_one, engine._ctx
        buf[0] = sample(chain, ctx, -1)
        start = time.perf_counter()
        for _ in range(n_tokens - 1):
            decode(ctx, batch_one(buf, 1))
            buf[0] = sample(chain, ctx, -1)
        elapsed = time.perf_counter() - start
        engine._cached = []  # the KV cache no longer matches the engine's bookkeeping
        lib.llama_memory_clear(engine._mem, True)
        return (n_tokens - 1) / elapsed
    finally:
        lib.llama_sampler_free(chain)


def run_high_level(path: Path, n_tokens: int, setting: dict, n_ctx: int, threads: int, flash_attn: bool) -> float:
    """llama-cpp-python's own streaming (the 'before' figure)."""
    from model_factory import high_level_llama

    llm = high_level_llama(path, n_ctx=n_ctx, n_threads=threads, flash_attn=flash_attn, verbose=False)
    try:
        eos = llm.token_eos()
        stamps: list[float] = []
        kwargs = {"temperature": setting.get("temperature", 0.0), "top_p": setting.get("top_p", 1.0)}
        if "seed" in setting:
            kwargs["seed"] = setting["seed"]
        for _ in llm.create_completion(
            PROMPT, max_tokens=n_tokens, stream=True, logit_bias={eos: -1e9}, repeat_penalty=1.0, top_k=0, **kwargs
        ):
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])
    finally:
        llm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", type=Path, help="GGUF file(s) to measure")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-high-level", action="store_true", help="skip the llama-cpp-python Llama baseline")
    ap.add_argument(
        "--flash-attn", choices=("on", "off"), default="off", help="same setting for both paths (Llama() default: off)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.model:
        models = {p.name: p for p in args.model}
    else:
        import model_factory

        models = {
            "SmolLM2-135M (49k vocab)": model_factory.smollm2_path(),
            "tiny R1 (152k vocab)": model_factory.tiny_r1_path(),
        }

    rows = []
    for label, path in models.items():
        flash = args.flash_attn == "on"
        engine = LlamaCppEngine(path, n_ctx=max(2048, args.tokens + 256), n_threads=args.threads, flash_attn=flash)
        try:
            for name, setting in SETTINGS.items():
                reps = [run_localr1(engine, args.tokens, setting) for _ in range(args.reps)]
                row = {"model": label, "sampling": name, "n_vocab": engine.n_vocab, "threads": engine.info.n_threads}
                for key in reps[0]:
                    row[key] = statistics.median(r[key] for r in reps)
                row["bare_loop_tps"] = statistics.median(
                    run_bare_loop(engine, args.tokens, setting) for _ in range(args.reps)
                )
                row["ratio_vs_bare_loop"] = row["localr1_tps"] / row["bare_loop_tps"]
                if setting.get("temperature", 0) > 0:
                    row["chain_loop_tps"] = statistics.median(
                        run_bare_loop(engine, args.tokens, setting, native_chain=True) for _ in range(args.reps)
                    )
                if not args.no_high_level:
                    row["high_level_tps"] = statistics.median(
                        run_high_level(path, args.tokens, setting, engine.info.n_ctx, engine.info.n_threads, flash)
                        for _ in range(args.reps)
                    )
                    row["high_level_ratio_vs_eval"] = row["high_level_tps"] / row["llama_eval_tps"]
                rows.append(row)
        finally:
            engine.close()

    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        f"{'model':26} {'sampling':11} {'localr1':>9} {'llama eval':>11} {'ratio':>6} "
        f"{'bare loop':>10} {'ratio':>6} {'sample ms/tok':>13} {'chain loop':>10} {'Llama():':>9} {'ratio':>6}"
    )
    print(f"decode tokens/s, median of {args.reps} runs of {args.tokens} tokens, flash attention {args.flash_attn}")
    print(header)
    for r in rows:
        hl = f"{r['high_level_tps']:9.1f} {r['high_level_ratio_vs_eval']:6.2f}" if "high_level_tps" in r else ""
        print(
            f"{r['model']:26} {r['sampling']:11} {r['localr1_tps']:9.1f} {r['llama_eval_tps']:11.1f} "
            f"{r['ratio_vs_eval']:6.2f} {r['bare_loop_tps']:10.1f} {r['ratio_vs_bare_loop']:6.2f} "
            f"{r['sample_ms_per_token']:13.3f} {r.get('chain_loop_tps', float('nan')):10.1f} {hl}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
