"""What one more request on a kept-alive connection costs a `localr1 serve` client.

The real command in its own process (``localr1 serve MODEL``), and the clients users point at it, each
keeping its connection open: httpx ``GET /health`` (the smallest request), and the openai client's
``chat.completions.create`` with ``max_tokens=1`` (a whole request and reply, one token generated). The first
request of each client opens the connection and is left out; the figure is the median of the rest.

Usage::

    python benchmarks/keepalive.py MODEL.gguf [--requests 50] [--source DIR] [--json]

``--source DIR`` runs the server from another checkout of localr1 (to measure a change against its parent).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def start(model: Path, source: Path | None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    cmd = [sys.executable, "-m", "localr1", "serve", str(model), "--port", "0", "--ctx", "1024"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if match := re.search(r"at (http://127\.0\.0\.1:\d+)", line):
            return proc, match[1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def timed(call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return out[1:]  # the first opened the connection


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import httpx
    import openai

    proc, url = start(args.model, args.source)
    try:
        with httpx.Client(base_url=url) as client:
            health = timed(lambda: client.get("/health").raise_for_status(), args.requests)
        api = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        chat = timed(lambda: api.chat.completions.create(model="", messages=messages, max_tokens=1), args.requests)
    finally:
        proc.terminate()
        proc.wait(30)
    result = {
        "source": str(args.source or "this checkout"),
        "httpx GET /health ms (median, p90)": [round(statistics.median(health), 2), round(sorted(health)[int(0.9 * len(health))], 2)],
        "openai chat, 1 token ms (median, p90)": [round(statistics.median(chat), 2), round(sorted(chat)[int(0.9 * len(chat))], 2)],
    }  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
