"""Time per token to choose a token from R1's 152,064 logits: localr1.engine.nucleus beside llama.cpp's chain.

Both sample as ``ask`` does by default (temperature 0.6, then top-p 0.95, no top-k) from the same logit
vectors:

* ``localr1``: ``NucleusSampler`` on a float32 array (what the engine does with llama.cpp's logits, read in
  place);
* ``llama.cpp``: the native chain ``temp -> top_p -> dist`` that ``llama_sampler_sample`` runs, applied to
  a candidate array refilled from the logits each time (``llama_sampler_sample`` fills it the same way in C
  before applying the chain; the refill here is a NumPy copy of the same bytes).

Distributions: ``peaked`` (one token holds more than 95%: the fast path), ``confident`` (a few tokens share
the mass, a long tail as in a real model), ``flat`` (near-uniform: a random-weight model, the worst case)
and ``real`` (logits saved from SmolLM2-135M while it wrote a story, padded to R1's vocabulary with values
far below its own; only with --real, which loads the model).

Usage::

    python benchmarks/sampling.py [--calls 300] [--vocab 152064] [--json] [--real]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from localr1.engine.nucleus import NucleusSampler  # noqa: E402

R1_VOCAB = 152_064


def distributions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    peaked = (rng.standard_normal(n) * 2).astype(np.float32)
    peaked[1234] = 30.0
    confident = (rng.standard_normal(n) * 2.5 - 5).astype(np.float32)
    confident[[10, 20, 30, 40]] = [12.0, 11.5, 11.0, 9.0]
    flat = (rng.standard_normal(n) * 0.25).astype(np.float32)
    return {"peaked": peaked, "confident": confident, "flat": flat}


def real_logits(n: int, steps: int = 64) -> dict[str, np.ndarray]:
    """Logits of SmolLM2-135M over ``steps`` tokens of a story, padded to ``n`` entries."""
    import model_factory

    from localr1.engine.llama_cpp import LlamaCppEngine
    from localr1.text.prompt import render, user_turn
    from localr1.text.sampling import Sampling

    engine = LlamaCppEngine(model_factory.smollm2_path(), n_ctx=512)
    try:
        captured: list[np.ndarray] = []
        read = engine._logits_reader()
        original = engine._nucleus

        def capturing(sampling):
            sample = original(sampling)

            def wrapped(chain, ctx, idx):
                captured.append(read(ctx, idx).copy())
                return sample(chain, ctx, idx)

            return wrapped

        engine._nucleus = capturing
        prompt = render(user_turn("Tell me a story about a lighthouse."), engine.info.chat_format)
        for _ in engine.stream(prompt, Sampling(seed=1, max_tokens=steps)):
            pass
    finally:
        engine.close()
    out = {}
    for i, row in enumerate(captured[:: max(len(captured) // 4, 1)][:4]):
        padded = np.full(n, row.min() - 20, np.float32)
        padded[: len(row)] = row
        out[f"real step {i}"] = padded
    return out


def time_localr1(logits: np.ndarray, calls: int) -> tuple[float, float]:
    sampler = NucleusSampler(len(logits), temperature=0.6, top_p=0.95, seed=1)
    sampler(logits)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        sampler(logits)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, sampler.draws / (calls + 1)


def time_llama_cpp(logits: np.ndarray, calls: int) -> float:
    from localr1.engine.bindings import load_bindings

    lib = load_bindings()
    n = len(logits)
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(0.6))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(0.95, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(1))
    data = (lib.llama_token_data * n)()
    view = np.frombuffer(data, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
    template = np.zeros(n, view.dtype)
    template["id"] = np.arange(n)
    template["logit"] = logits
    array = lib.llama_token_data_array(data, n, -1, False)
    times = []
    try:
        for _ in range(calls + 1):
            t = time.perf_counter()
            np.copyto(view, template)
            array.data, array.size, array.selected, array.sorted = data, n, -1, False
            lib.llama_sampler_apply(chain, ctypes.byref(array))
            times.append(time.perf_counter() - t)
    finally:
        lib.llama_sampler_free(chain)
    return statistics.median(times[1:]) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--vocab", type=int, default=R1_VOCAB)
    ap.add_argument("--real", action="store_true", help="also time logits saved from SmolLM2-135M")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp's chain")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cases = distributions(args.vocab)
    if args.real:
        cases.update(real_logits(args.vocab))
    rows = []
    for name, logits in cases.items():
        ours, draws = time_localr1(logits, args.calls)
        row = {"distribution": name, "vocab": args.vocab, "localr1_ms": ours, "draws_per_token": draws}
        if not args.no_llama_cpp:
            row["llama_cpp_ms"] = time_llama_cpp(logits, args.calls)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"ms per token, median of {args.calls} calls, temperature 0.6, top-p 0.95, vocabulary {args.vocab:,}")
    print(f"{'distribution':16} {'localr1':>9} {'draws/tok':>10} {'llama.cpp':>10} {'speed-up':>9}")
    for r in rows:
        theirs = r.get("llama_cpp_ms")
        tail = f"{theirs:10.3f} {theirs / r['localr1_ms']:8.1f}x" if theirs is not None else ""
        print(f"{r['distribution']:16} {r['localr1_ms']:9.3f} {r['draws_per_token']:10.2f} {tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
