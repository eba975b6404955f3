"""How fast is `localr1 serve`: one stream against `ask`, and N concurrent streams against llama-server.

Everything runs as users run it, with R1's default sampling (temperature 0.6, top-p 0.95, no top-k or
min-p), a fixed number of generated tokens (end of stream banned), the same model, threads and slots:

* ``ask``: one generation through ``LlamaCppEngine.stream`` (what ``localr1 ask`` runs), decode tokens/s;
* ``serve, 1 stream``: ``localr1 serve`` in its own process, one streaming /v1/chat/completions request,
  decode tokens/s as the client sees it (first to last streamed token);
* ``serve, N streams`` and ``llama-server, N streams``: N streaming requests at once; aggregate decode
  tokens/s = all tokens after each stream's first / (last token of any - first token of the last to start).
  llama-server is built from the same llama.cpp source (``benchmarks/build_llama_bench.sh PY llama-server``)
  and started with the same threads, slots and total context, flash attention and weight repacking as
  localr1 uses on this machine;
* ``llama-batched-bench``: llama.cpp's own decode of 1 and N sequences, no sampling and no HTTP: how much
  batching can gain on this machine at all.

Usage::

    python benchmarks/serve.py MODEL.gguf [--tokens 128] [--streams 4] [--threads N] [--gpu-layers N] [--reps 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Prove that the square root of 2 is irrational.",
    "How many primes are there below 100?",
    "Write a haiku about a compiler.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Explain the Monty Hall problem.",
    "Sum the integers from 1 to 1000.",
    "Why is the sky blue?",
    "Name three uses of a Fourier transform.",
]


def ask_decode_tps(model: Path, tokens: int, threads: int, ctx: int, gpu_layers: int) -> float:
    """Decode tokens/s of one generation through the engine `ask` uses, R1 sampling, EOS banned."""
    from localr1.engine.llama_cpp import LlamaCppEngine
    from localr1.events import Done
    from localr1.text.prompt import render, user_turn
    from localr1.text.sampling import Sampling

    with LlamaCppEngine(model, n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers) as engine:
        bias = {t: float("-inf") for t in engine.end_tokens()}
        prompt = render(user_turn(PROMPTS[0]), engine.info.chat_format)
        done = [e for e in engine.stream(prompt, Sampling(seed=1, max_tokens=tokens, logit_bias=bias))][-1]
        assert isinstance(done, Done) and done.usage.completion_tokens == tokens, done
        return done.timings.decode_tps


def end_tokens(model: Path) -> list[int]:
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(model, n_ctx=256, n_threads=1) as engine:
        return engine.end_tokens()


def stream_once(url: str, body: dict, barrier: threading.Barrier | None, out: list) -> None:
    """One streaming chat request; appends (arrival times of the streamed chunks, completion tokens)."""
    import httpx

    if barrier is not None:
        barrier.wait()
    times: list[float] = []
    usage = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=3600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):
                    times.append(time.perf_counter())
    out.append((times, usage))


def run_streams(url: str, n: int, tokens: int, extra: dict) -> dict:
    """N concurrent streams; each must generate ``tokens`` tokens."""
    results: list = []
    barrier = threading.Barrier(n)
    threads = []
    for i in range(n):
        body = {
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": tokens,
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 0,
            "min_p": 0.0,
            "seed": 100 + i,
            **extra,
        }
        threads.append(threading.Thread(target=stream_once, args=(url, body, barrier, results)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n
    for times, usage in results:
        assert usage == tokens, f"a stream generated {usage} tokens, not {tokens}"
    firsts = [times[0] for times, _ in results]
    lasts = [times[-1] for times, _ in results]
    if n == 1:
        ((times, usage),) = results
        # chunks carry several tokens when they come faster than a display frame: count tokens, not chunks
        return {"decode_tps": (usage - 1) / (times[-1] - times[0])}
    window = max(lasts) - max(firsts)  # every stream decoding, none still in its prompt
    # tokens decoded inside the window, estimated per stream from its own steady rate
    inside = 0.0
    for (times, usage), first in zip(results, firsts):
        rate = (usage - 1) / (times[-1] - first)
        inside += rate * (min(times[-1], max(lasts)) - max(firsts))
    return {"aggregate_tps": inside / window, "total_tps": n * (tokens - 1) / (max(lasts) - min(firsts))}


def start(cmd: list[str], ready: re.Pattern, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := ready.search(line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, m["url"]
    raise RuntimeError(f"{cmd[0]} did not start (exit {proc.wait()})")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt-ctx", type=int, default=512, help="context per slot beyond the generated tokens")
    ap.add_argument("--llama-server", type=Path, default=None, help="llama-server binary (default: build it)")
    ap.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        help="layers on the GPU for every side (-1: all; default: all where the build has a GPU)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from localr1.engine.backend import init_backend, weight_repacking
    from localr1.engine.devices import list_devices
    from localr1.machine.cpu import physical_cores

    threads = args.threads or physical_cores()
    ctx = args.prompt_ctx + args.tokens
    n = args.streams
    layers = args.gpu_layers if args.gpu_layers is not None else (-1 if any(d.is_gpu for d in list_devices()) else 0)
    ngl = str(999 if layers < 0 else layers)
    eos = end_tokens(args.model)
    ban = {"logit_bias": {str(t): -100 for t in eos}}
    results: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)
        print(f"  {key}: {value:.2f}", file=sys.stderr)

    print(f"{args.model.name}: {args.tokens} tokens per stream, {threads} threads", file=sys.stderr)
    for _ in range(args.reps):
        record("ask decode tok/s", ask_decode_tps(args.model, args.tokens, threads, ctx, layers))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "localr1", "serve", str(args.model), "--port", "0", "--ctx", str(ctx),
           "--parallel", str(n), "--threads", str(threads), "--gpu-layers", str(layers)]  # fmt: skip
    proc, url = start(cmd, re.compile(r"at (?P<url>http://\S+)"), env)
    try:
        for _ in range(args.reps):
            record("serve 1 stream tok/s", run_streams(url, 1, args.tokens, ban)["decode_tps"])
            record(f"serve {n} streams aggregate tok/s", run_streams(url, n, args.tokens, ban)["aggregate_tps"])
    finally:
        proc.terminate()
        proc.wait()

    binary = args.llama_server
    if binary is None:
        build = ROOT / "benchmarks" / "build_llama_bench.sh"
        binary = Path(subprocess.run(["bash", str(build), sys.executable, "llama-server"], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1])  # fmt: skip
    port = free_port()
    cmd = [str(binary), "-m", str(args.model), "-t", str(threads), "-tb", str(threads), "-c", str(ctx * n),
           "-np", str(n), "--port", str(port), "--host", "127.0.0.1", "-fa", "auto", "--no-webui", "-ngl", ngl]  # fmt: skip
    if not weight_repacking(init_backend()):
        cmd.append("--no-repack")
    proc, _ = start(cmd, re.compile(r"(?P<url>listening on \S+)"))
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):  # llama-server listens before the model is ready
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        llama_extra = {"ignore_eos": True}
        for _ in range(args.reps):
            record("llama-server 1 stream tok/s", run_streams(url, 1, args.tokens, llama_extra)["decode_tps"])
            record(
                f"llama-server {n} streams aggregate tok/s",
                run_streams(url, n, args.tokens, llama_extra)["aggregate_tps"],
            )
    finally:
        proc.terminate()
        proc.wait()

    # llama.cpp's own ceiling for the same decode: llama-batched-bench (no sampling, no HTTP, one process)
    batched = binary.with_name("llama-batched-bench")
    if not batched.exists():
        build = ROOT / "benchmarks" / "build_llama_bench.sh"
        subprocess.run(["bash", str(build), sys.executable, "llama-batched-bench"], check=True, capture_output=True)
    cmd = [str(batched), "-m", str(args.model), "-c", str(ctx * n), "-b", "512", "-ub", "512", "-npp", "32",
           "-ntg", str(args.tokens), "-npl", f"1,{n}", "-t", str(threads), "-fa", "auto", "-ngl", ngl]  # fmt: skip
    if not weight_repacking(init_backend()):
        cmd.append("--no-repack")
    for _ in range(args.reps):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows = [line.split("|") for line in out.splitlines() if re.match(r"\|\s+32 \|", line)]
        for row in rows:
            parallel, s_tg = int(row[3]), float(row[8])
            record(f"llama-batched-bench {parallel} seq tok/s", s_tg)

    best = {k: max(v) for k, v in results.items()}
    ask, one = best["ask decode tok/s"], best["serve 1 stream tok/s"]
    many, theirs = best[f"serve {n} streams aggregate tok/s"], best[f"llama-server {n} streams aggregate tok/s"]
    summary = {
        "model": args.model.name,
        "tokens": args.tokens,
        "streams": n,
        "threads": threads,
        "gpu_layers": layers,
        "runs": results,
        "best": best,
        "serve_1_vs_ask": one / ask,
        f"serve_{n}_vs_llama_server_{n}": many / theirs,
        f"serve_{n}_vs_serve_1": many / one,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\n{args.model.name}, {threads} threads, {args.tokens} tokens/stream, R1 sampling (best of {args.reps})")
        for key, value in best.items():
            print(f"  {key:40} {value:8.2f}")
        print(f"  {'serve 1 stream / ask':40} {one / ask:8.3f}   (target >= 0.95)")
        print(f"  {f'serve {n} streams / llama-server {n}':40} {many / theirs:8.3f}   (target >= 0.90)")
        print(f"  {f'serve {n} streams / serve 1 stream':40} {many / one:8.3f}   (target > 2)")
        ceiling = best.get(f"llama-batched-bench {n} seq tok/s", 0) / best.get("llama-batched-bench 1 seq tok/s", 1)
        print(f"  {f'llama.cpp itself: {n} seq / 1 seq':40} {ceiling:8.3f}   (llama-batched-bench: the ceiling)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
