"""Run in a child process whose ``llama_cpp`` is the Vulkan build (tests/vulkan/conftest.py sets PYTHONPATH);
one task per call, one JSON object on the last line of stdout."""

from __future__ import annotations

import json
import re
import sys

_LAYER = re.compile(r"layer\s+(?P<i>\d+) assigned to device (?P<dev>\S+),")


def devices() -> dict:
    from localr1.engine.devices import list_devices

    return {"devices": [{"name": d.name, "kind": d.kind, "description": d.description} for d in list_devices()]}


def _greedy(engine, prompt: str, max_tokens: int) -> tuple[list[int], dict]:
    """Greedy tokens for the prompt, and where llama.cpp put each overridden tensor; closes the engine."""
    from localr1.text.prompt import render, user_turn
    from localr1.text.sampling import Sampling

    with engine:
        tokens: list[int] = []
        original = engine.token_piece
        engine.token_piece = lambda t: (tokens.append(t), original(t))[1]
        list(
            engine.stream(
                render(user_turn(prompt), engine.info.chat_format), Sampling(temperature=0, max_tokens=max_tokens)
            )
        )
        return tokens, dict(engine.placements)


def generate(path: str, n_gpu_layers: int, n_ctx: int, rules: list, prompt: str, max_tokens: int,
             flash_attn: bool | None = None, n_batch: int = 512, workers: list | None = None) -> dict:  # fmt: skip
    """Greedy tokens and llama.cpp's own buffer and placement log (``workers``: `localr1 worker`s added
    first, as --workers does)."""
    from localr1.engine.llama_cpp import _LOG, LlamaCppEngine, buffer_sizes

    if workers:
        from localr1.engine.rpc import add_workers

        add_workers(workers)

    with _LOG.capture() as lines:
        engine = LlamaCppEngine(path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, use_mmap=False, flash_attn=flash_attn,
                                n_batch=n_batch, tensor_overrides=[tuple(r) for r in rules])  # fmt: skip
    tokens, placements = _greedy(engine, prompt, max_tokens)
    buffers = buffer_sizes(lines)
    layers = {m["i"]: m["dev"] for line in lines if (m := _LAYER.search(line))}
    return {"tokens": tokens, "placements": placements, "buffers": buffers, "layers": layers}


def spread(path: str, workers: list, n_ctx: int, prompt: str, max_tokens: int) -> dict:
    """Offload across machines as localr1 plans it (offload.plan_offload with the workers added), on the real
    devices: their memory is what the plan is told, tight enough that the main device (the local GPU if this
    process sees one, else a worker) holds the layers and one layer's experts, each other worker one layer's
    experts, and RAM none (what is left stays mapped from disk). Then loaded with the plan's tensor split and rules, for greedy tokens."""
    from dataclasses import replace

    from localr1.engine.llama_cpp import _LOG, LlamaCppEngine
    from localr1.engine.rpc import add_workers
    from localr1.fit.candidates import from_file
    from localr1.fit.capacity import GPU_MARGIN, GPU_RESERVE, RAM_MARGIN, RAM_RESERVE, RPC_RESERVE
    from localr1.fit.memory import estimate, expert_host_compute_bytes, expert_staging_bytes
    from localr1.fit.offload import plan_offload
    from localr1.machine.hardware import machine

    add_workers(workers)
    c = from_file(__import__("pathlib").Path(path))
    experts = [b for b in c.weights.expert_layers if b]
    layer = max(experts)
    full = estimate(c.arch, c.weights, n_ctx, -1)
    hot = full.gpu_total - sum(c.weights.expert_layers)
    hw = machine()
    local = [g for g in hw.gpus if g.vendor != "rpc"]
    gpus = []
    for g in hw.gpus:
        if g.vendor == "rpc" and (local or gpus):  # a worker that lends its memory to experts: room for one layer
            free = (1.5 * layer + expert_host_compute_bytes(c.arch) + RPC_RESERVE) / GPU_MARGIN
        else:  # the main device: the layers, the KV cache, one layer's experts (and room to stream RAM experts)
            reserve = RPC_RESERVE if g.vendor == "rpc" else GPU_RESERVE
            free = (hot + 1.5 * layer + expert_staging_bytes(c.weights, range(len(experts) + 1)) + reserve) / GPU_MARGIN
        gpus.append(replace(g, free=int(free), total=int(free)))
    ram = (full.cpu_total + expert_host_compute_bytes(c.arch) + RAM_RESERVE + 0.5 * layer) / RAM_MARGIN
    # a slow disk (50 MB/s): for layers this small a fast disk would cost a token less than a network visit
    hw = replace(hw, gpus=tuple(gpus), ram_available=int(ram), disk_bandwidth_gbs=0.05)
    p = plan_offload(c, hw, n_ctx)
    with _LOG.capture() as lines:
        engine = LlamaCppEngine(path, n_ctx=n_ctx, n_gpu_layers=-1, use_mmap=False, tensor_overrides=p.rules,
                                main_device=p.main_device)  # fmt: skip
    tokens, placements = _greedy(engine, prompt, max_tokens)
    layers = {m["i"]: m["dev"] for line in lines if (m := _LAYER.search(line))}
    return {
        "tokens": tokens, "placements": placements, "layers": layers, "main_device": p.main_device,
        "rules": p.rules, "describe": p.describe(), "ram_expert_layers": p.ram_expert_layers,
        "disk_expert_layers": p.disk_expert_layers,
        "devices": [[d.device, d.ggml_name, list(d.expert_layers), d.hot] for d in p.devices],
    }  # fmt: skip


def measure(path: str, n_ctx: int, n_gpu_layers: int, rules: list, n_ubatch: int = 512) -> dict:
    from localr1.engine.llama_cpp import measure_allocation

    return measure_allocation(path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_ubatch=n_ubatch,
                              tensor_overrides=[tuple(r) for r in rules])  # fmt: skip


if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = {"devices": devices, "generate": generate, "measure": measure, "spread": spread}[task](**args)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
