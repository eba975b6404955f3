"""What a build needs and what a machine offers: planner candidates, memory budgets, and decode speed from
memory bandwidth. Below both the planner and the MoE offload placement, which each use them."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localr1.engine.cpu_speed import family
from localr1.engine.step_probe import PROBE, step_read
from localr1.fit.arch import Architecture
from localr1.fit.memory import WeightLayout
from localr1.machine.hardware import GPU, Hardware
from localr1.units import GiB, MiB

GPU_RESERVE = 600 * MiB  # per GPU: the CUDA/Metal context and allocator slack
RPC_RESERVE = 32 * MiB  # per `localr1 worker` device: no driver context on this side, only allocator slack
GPU_MARGIN = 0.95
RAM_RESERVE = int(1.5 * GiB)  # the OS, localr1 itself, the page cache it needs to breathe
RAM_MARGIN = 0.90
DEFAULT_LINK_GBS = 0.125  # a worker's link when not measured: 1 Gbit/s Ethernet
GPU_EFFICIENCY = 0.61  # share of memory bandwidth llama.cpp decoding reaches: calibrated, see docs/performance.md
CPU_EFFICIENCY = 0.60
# Apple silicon (Metal), fitted to published llama-bench decode figures of the r1:8b and r1:70b shapes
# (docs/performance.md lists each with its source): a token pays a fixed time per layer on the GPU (Metal's
# dispatch of the layer's kernels: one M2 Ultra's 8B and 70B figures separate it from the bandwidth term),
# and each chip generation reaches its own share of its peak bandwidth.
METAL_LAYER_S = 0.16e-3
METAL_SHARE = {1: 0.57, 2: 0.785, 3: 0.776, 4: 0.93}
METAL_SHARE_UNKNOWN = 0.776  # an Apple GPU whose generation is not known: the middle of the table
# graph nodes per layer of a decode step (llama.cpp's qwen2 graph with flash attention: 34, views included)
NODES_PER_LAYER = 34
# The share of the isolated kernels' speed (engine/cpu_speed.py) a whole CPU decode step keeps, the matrix
# products interleaved with the layers' other work: measured on each machine by timing a decode step of
# engine/step_probe.py's model (step_share). Where that could not run: the share measured on the 2-core VM
# localr1 was first developed on (0.83 for r1:1.5b and 0.92 for r1:7b against llama-bench there).
DEFAULT_STEP_SHARE = 0.875
STEP_SHARE_RANGE = (0.2, 2.5)  # a probe outside it measured something else (a machine busy elsewhere)


@dataclass(frozen=True)
class Candidate:
    name: str  # catalog name, or the file name of a loose GGUF
    quant: str
    arch: Architecture
    weights: WeightLayout
    quality: float  # expected benchmark score (catalog score x quant factor), 0 when unknown
    path: Path | None = None  # on disk already
    exact: bool = False  # weights from the file's header, not estimated
    listed: bool = False  # weights scaled to the size the catalog lists for the build (the Hub's listing)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.quant}" if ":" in self.name else self.name


@dataclass(frozen=True)
class Budget:
    gpu: int  # bytes all GPUs together may take
    ram: int
    disk: int | None
    n_gpus: int
    unified: bool

    @classmethod
    def of(cls, hw: Hardware) -> Budget:
        gpu = sum(device_room(g) for g in hw.gpus)
        ram = max(0, int(hw.ram_available * RAM_MARGIN) - RAM_RESERVE)
        if hw.unified:
            gpu = min(gpu, ram)  # one pool of memory
        return cls(gpu=gpu, ram=ram, disk=hw.disk_free, n_gpus=len(hw.gpus), unified=hw.unified)


def device_room(g: GPU) -> int:
    """Bytes one GPU (or worker device) may take: its free memory with a margin, less its reserve."""
    return max(0, int(g.free * GPU_MARGIN) - (RPC_RESERVE if g.remote else GPU_RESERVE))


def placement_tps(
    hw: Hardware,
    arch: Architecture,
    *,
    gpu_dense: float,
    cpu_dense: float,
    gpu_experts: float = 0.0,
    cpu_experts: float = 0.0,
    disk_experts: float = 0.0,
    gpu_kv: float = 0.0,
    cpu_kv: float = 0.0,
    quant: str = "",
    gpu_layers: int = 0,
    mix: tuple[tuple[str, int], ...] = (),
) -> float:
    """Decode tokens/s for a placement: the one speed model for plain layer offload and MoE offload alike.

    Each token reads every dense weight (attention, shared experts, dense FFNs, the output matrix) where it
    lies, only the active share (``n_expert_used / n_expert``) of the routed experts in each tier, and on
    average a quarter of the KV cache. The token embeddings are not counted: a token reads one row of them.
    Callers pass weights without the embeddings; ``gpu_layers``: the layers that run on the GPU (each costs a
    token a fixed time there, see layer_overhead_s); ``mix``: the weights' bytes per tensor type (their CPU
    kernels differ in speed). On the CPU the KV cache is read at the f16 kernels' speed, and each layer there
    costs its graph's thread hand-offs (cpu_seconds)."""
    active = arch.n_expert_used / arch.n_expert if arch.is_moe and arch.n_expert else 1.0
    gpu_weights = gpu_dense + active * gpu_experts
    cpu_read = cpu_dense + active * cpu_experts
    gpu_read, cpu_kv_read = gpu_weights + gpu_kv / 4, cpu_kv / 4
    if not hw.gpus:  # nothing is on a GPU: every byte comes from RAM
        gpu_read, cpu_read, cpu_kv_read, gpu_layers = 0.0, cpu_read + gpu_weights, cpu_kv_read + gpu_kv / 4, 0
    return tokens_per_s(
        hw,
        gpu_read,
        cpu_read,
        active * disk_experts,
        quant=quant,
        hop_bytes=activation_bytes(arch),
        gpu_layers=gpu_layers,
        mix=mix,
        cpu_kv_read=cpu_kv_read,
        cpu_layers=max(arch.n_layer - gpu_layers, 0) if cpu_read > 0 else 0,
        gqa=arch.query_heads_per_kv,
    )


def cpu_rate(hw: Hardware, quant: str = "", mix: tuple[tuple[str, int], ...] = ()) -> float:
    """Bytes/s the CPU gets through when it computes with weights in RAM: its measured kernel speed for the
    quant's family where measured — for a ``mix`` of tensor types, each type's share at its own family's
    speed — else the RAM bandwidth times an efficiency."""
    rates = hw.cpu_decode_gbs
    if rates and mix:
        total = sum(b for _, b in mix)
        if total and all(rates.get(family(t)) for t, _ in mix):
            return total / sum(b / (rates[family(t)] * 1e9) for t, b in mix)
    if rates:
        measured = rates.get(family(quant) if quant else "q4_k")
        if measured:
            return measured * 1e9
    return hw.ram_bandwidth_gbs * 1e9 * CPU_EFFICIENCY


def cpu_seconds(
    hw: Hardware, read: float, *, quant: str = "", mix=(), kv_read: float = 0.0, layers: int = 0, gqa: int = 1
) -> float:
    """Seconds a token spends on the CPU: its weights at the kernels' speed; the KV cache it attends over,
    once per query head (llama.cpp's CPU flash attention walks a KV head's rows for each of the ``gqa``
    query heads that share it), at the speed measured for flash attention (an older cache of measurements:
    the f16 matrix-vector kernel's); and the thread hand-offs of the layers' graph
    nodes (NODES_PER_LAYER each, at the measured cost of one); all over the share of those speeds a whole
    step keeps on this machine (step_share) where the kernels were measured."""
    seconds = _kernel_seconds(hw, read, quant=quant, mix=mix, kv_read=kv_read, layers=layers, gqa=gqa)
    return seconds / step_share(hw) if hw.cpu_decode_gbs else seconds


def _kernel_seconds(hw: Hardware, read: float, *, quant: str = "", mix=(), kv_read=0.0, layers=0, gqa=1) -> float:
    """cpu_seconds before the step share: the terms the isolated measurements give."""
    rates = hw.cpu_decode_gbs
    seconds = read / cpu_rate(hw, quant, mix) if read > 0 else 0.0
    if kv_read > 0:
        attn = (rates.get("attn") or rates.get("f16")) if rates else None
        seconds += kv_read * max(gqa, 1) / (attn * 1e9 if attn else cpu_rate(hw, quant, mix))
    return seconds + layers * NODES_PER_LAYER * hw.cpu_sync_us * 1e-6


@functools.lru_cache(maxsize=1)
def _probe_read() -> tuple[tuple[str, int], ...]:
    return tuple(sorted(step_read().items()))


def step_share(hw: Hardware) -> float:
    """The share of the kernels' measured speed a whole decode step keeps on this machine: the step probe's
    model (engine/step_probe.py) estimated by the same terms as every model (its tensor types at their
    kernels' speeds, its layers' graph nodes), over the time one of its decode steps took."""
    if not hw.cpu_decode_gbs or hw.cpu_step_probe_s <= 0:
        return DEFAULT_STEP_SHARE
    mix = _probe_read()
    share = _kernel_seconds(hw, sum(b for _, b in mix), mix=mix, layers=PROBE.n_layer) / hw.cpu_step_probe_s
    lo, hi = STEP_SHARE_RANGE
    return share if lo <= share <= hi else DEFAULT_STEP_SHARE


def gpu_efficiency(g: GPU) -> float:
    """The share of its peak memory bandwidth llama.cpp's decoding reaches on this GPU."""
    if g.vendor != "apple":
        return GPU_EFFICIENCY
    m = re.search(r"\bM(\d+)\b", g.name)
    if m is None:
        return METAL_SHARE_UNKNOWN
    gen = int(m.group(1))
    return METAL_SHARE.get(gen, METAL_SHARE[max(METAL_SHARE)] if gen > max(METAL_SHARE) else METAL_SHARE_UNKNOWN)


def effective_bandwidth(g: GPU) -> float:
    """Bytes/s of weights a decode step reads on this GPU."""
    return g.bandwidth_gbs * 1e9 * gpu_efficiency(g)


def layer_overhead_s(gpus: Sequence[GPU]) -> float:
    """Seconds each layer on these GPUs adds to a token beyond its bytes (Metal's kernel dispatch)."""
    return max((METAL_LAYER_S if g.vendor == "apple" else 0.0 for g in gpus), default=0.0)


def activation_bytes(arch: Architecture) -> int:
    """What crosses to a device and back for each decoded token: one f32 hidden state."""
    return 4 * arch.n_embd


def round_trip_s(g: GPU, hop_bytes: float) -> float:
    """Seconds a token pays to visit a remote device (llama.cpp RPC) once: the activations go there and the
    result comes back, two transfers over the link (0 for a local device)."""
    if not g.remote:
        return 0.0
    return 2 * (g.latency_s + hop_bytes / ((g.link_gbs or DEFAULT_LINK_GBS) * 1e9))


def tokens_per_s(
    hw: Hardware,
    gpu_read: float,
    cpu_read: float,
    disk_read: float,
    *,
    quant: str = "",
    hop_bytes: float = 0.0,
    gpu_layers: int = 0,
    mix=(),
    cpu_kv_read: float = 0.0,
    cpu_layers: int = 0,
    gqa: int = 1,
) -> float:
    """Decode speed when each token reads these bytes from the GPU, RAM and disk tiers (``hop_bytes``: what
    crosses to a remote device and back, see activation_bytes)."""
    # llama.cpp splits the layers over all the GPUs; a remote device (llama.cpp RPC) holding a run of layers
    # costs one visit per token: the activations go there and back
    hops = sum(round_trip_s(g, hop_bytes) for g in hw.gpus) if gpu_read > 0 else 0.0
    return spread_tps(
        hw,
        main=hw.gpus,
        main_read=gpu_read,
        cpu_read=cpu_read,
        disk_read=disk_read,
        hops_s=hops,
        quant=quant,
        gpu_layers=gpu_layers,
        mix=mix,
        cpu_kv_read=cpu_kv_read,
        cpu_layers=cpu_layers,
        gqa=gqa,
    )


def gpu_seconds(gpus, read: float) -> float:
    """Seconds for ``read`` bytes spread over these GPUs as llama.cpp splits layers (by free memory): a token
    visits each in turn and each reads its share at its own speed."""
    free = sum(max(g.free, 1) for g in gpus)
    return sum(read * max(g.free, 1) / free / effective_bandwidth(g) for g in gpus)


def spread_tps(
    hw: Hardware,
    *,
    main: Sequence[GPU],
    main_read: float,
    device_reads: Sequence[tuple[GPU, float]] = (),
    cpu_read: float = 0.0,
    disk_read: float = 0.0,
    hops_s: float = 0.0,
    quant: str = "",
    gpu_layers: int = 0,
    mix=(),
    cpu_kv_read: float = 0.0,
    cpu_layers: int = 0,
    gqa: int = 1,
) -> float:
    """Decode tokens/s when the layers sit on ``main`` (split by free memory) and other devices hold only
    routed experts: bytes each token reads from each tier, plus ``hops_s`` of network visits (the caller
    counts them: a worker holding a run of layers costs one, a worker's experts one per layer)."""
    seconds = gpu_seconds(main, main_read) if main_read > 0 and main else 0.0
    if seconds:
        seconds += gpu_layers * layer_overhead_s(main)
    for device, read in device_reads:
        seconds += read / effective_bandwidth(device)
    if cpu_read > 0 or cpu_kv_read > 0:
        seconds += cpu_seconds(hw, cpu_read, quant=quant, mix=mix, kv_read=cpu_kv_read, layers=cpu_layers, gqa=gqa)
    if disk_read > 0:
        seconds += disk_read / (hw.disk_bandwidth_gbs * 1e9)
    seconds += hops_s
    return 1.0 / seconds if seconds > 0 else float("inf")
