"""What a build needs and what a machine offers: planner candidates, memory budgets, and decode speed from
memory bandwidth. Below both the planner and the MoE offload placement, which each use them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localr1.engine.cpu_speed import family
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
) -> float:
    """Decode tokens/s for a placement: the one speed model for plain layer offload and MoE offload alike.

    Each token reads every dense weight (attention, shared experts, dense FFNs, the output matrix) where it
    lies, only the active share (``n_expert_used / n_expert``) of the routed experts in each tier, and on
    average a quarter of the KV cache. The token embeddings are not counted: a token reads one row of them.
    Callers pass weights without the embeddings."""
    active = arch.n_expert_used / arch.n_expert if arch.is_moe and arch.n_expert else 1.0
    gpu_read = gpu_dense + active * gpu_experts + gpu_kv / 4
    cpu_read = cpu_dense + active * cpu_experts + cpu_kv / 4
    if not hw.gpus:  # nothing is on a GPU: every byte comes from RAM
        gpu_read, cpu_read = 0.0, gpu_read + cpu_read
    return tokens_per_s(hw, gpu_read, cpu_read, active * disk_experts, quant=quant, hop_bytes=activation_bytes(arch))


def cpu_rate(hw: Hardware, quant: str = "") -> float:
    """Bytes/s the CPU gets through when it computes with weights in RAM: its measured kernel speed for the
    quant's family where measured, else the RAM bandwidth times an efficiency."""
    if hw.cpu_decode_gbs:
        measured = hw.cpu_decode_gbs.get(family(quant) if quant else "q4_k")
        if measured:
            return measured * 1e9
    return hw.ram_bandwidth_gbs * 1e9 * CPU_EFFICIENCY


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
    hw: Hardware, gpu_read: float, cpu_read: float, disk_read: float, *, quant: str = "", hop_bytes: float = 0.0
) -> float:
    """Decode speed when each token reads these bytes from the GPU, RAM and disk tiers (``hop_bytes``: what
    crosses to a remote device and back, see activation_bytes)."""
    # llama.cpp splits the layers over all the GPUs; a remote device (llama.cpp RPC) holding a run of layers
    # costs one visit per token: the activations go there and back
    hops = sum(round_trip_s(g, hop_bytes) for g in hw.gpus) if gpu_read > 0 else 0.0
    return spread_tps(
        hw, main=hw.gpus, main_read=gpu_read, cpu_read=cpu_read, disk_read=disk_read, hops_s=hops, quant=quant
    )


def gpu_seconds(gpus, read: float) -> float:
    """Seconds for ``read`` bytes spread over these GPUs as llama.cpp splits layers (by free memory): a token
    visits each in turn and each reads its share at its own speed."""
    free = sum(max(g.free, 1) for g in gpus)
    return sum(read * max(g.free, 1) / free / (g.bandwidth_gbs * 1e9 * GPU_EFFICIENCY) for g in gpus)


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
) -> float:
    """Decode tokens/s when the layers sit on ``main`` (split by free memory) and other devices hold only
    routed experts: bytes each token reads from each tier, plus ``hops_s`` of network visits (the caller
    counts them: a worker holding a run of layers costs one, a worker's experts one per layer)."""
    seconds = gpu_seconds(main, main_read) if main_read > 0 and main else 0.0
    for device, read in device_reads:
        seconds += read / (device.bandwidth_gbs * 1e9 * GPU_EFFICIENCY)
    if cpu_read > 0:
        seconds += cpu_read / cpu_rate(hw, quant)
    if disk_read > 0:
        seconds += disk_read / (hw.disk_bandwidth_gbs * 1e9)
    seconds += hops_s
    return 1.0 / seconds if seconds > 0 else float("inf")
