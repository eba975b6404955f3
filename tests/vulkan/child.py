"""Run in a child process whose ``llama_cpp`` is the Vulkan build (tests/vulkan/conftest.py sets PYTHONPATH);
one task per call, one JSON object on the last line of stdout."""

from __future__ import annotations

import json
import re
import sys

_BUFFER = re.compile(r"(?P<dev>\S+)\s+(?P<what>compute|output|model|KV) buffer size =\s*(?P<mib>[\d.]+) MiB")
_LAYER = re.compile(r"layer\s+(?P<i>\d+) assigned to device (?P<dev>\S+),")


def devices() -> dict:
    from localr1.engine.devices import list_devices

    return {"devices": [{"name": d.name, "kind": d.kind, "description": d.description} for d in list_devices()]}


def generate(path: str, n_gpu_layers: int, n_ctx: int, rules: list, prompt: str, max_tokens: int,
             flash_attn: bool | None = None, n_batch: int = 512, workers: list | None = None) -> dict:  # fmt: skip
    """Greedy tokens and llama.cpp's own buffer and placement log (``workers``: `localr1 worker`s added
    first, as --workers does)."""
    from localr1.engine.llama_cpp import _LOG, LlamaCppEngine

    if workers:
        from localr1.engine.rpc import add_workers

        add_workers(workers)
    from localr1.prompt import render, user_turn
    from localr1.sampling import Sampling

    with _LOG.capture() as lines:
        engine = LlamaCppEngine(path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, use_mmap=False, flash_attn=flash_attn,
                                n_batch=n_batch, tensor_overrides=[tuple(r) for r in rules])  # fmt: skip
    with engine:
        tokens: list[int] = []
        original = engine.token_piece
        engine.token_piece = lambda t: (tokens.append(t), original(t))[1]
        list(
            engine.stream(
                render(user_turn(prompt), engine.info.chat_format), Sampling(temperature=0, max_tokens=max_tokens)
            )
        )
        placements = dict(engine.placements)
    buffers: dict[str, float] = {}
    layers: dict[str, str] = {}
    for line in lines:
        if m := _BUFFER.search(line):
            key = f"{m['what'].lower()}:{m['dev']}"
            buffers[key] = buffers.get(key, 0.0) + float(m["mib"])
        elif m := _LAYER.search(line):
            layers[m["i"]] = m["dev"]
    return {"tokens": tokens, "placements": placements, "buffers": buffers, "layers": layers}


def measure(path: str, n_ctx: int, n_gpu_layers: int, rules: list, n_ubatch: int = 512) -> dict:
    from localr1.engine.llama_cpp import measure_allocation

    return measure_allocation(path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_ubatch=n_ubatch,
                              tensor_overrides=[tuple(r) for r in rules])  # fmt: skip


if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = {"devices": devices, "generate": generate, "measure": measure}[task](**args)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
