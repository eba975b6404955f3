"""Offload mode: where each tensor of a mixture-of-experts model goes — GPU, RAM, or memory-mapped disk.

The hot part of a MoE model (attention, shared experts, dense leading layers, norms, router, output) is
read for every token and is small; the routed experts are most of the bytes but each token reads only
``n_expert_used / n_expert`` of them. So: the hot tensors and the KV cache go to the GPU first, then as many
layers' routed experts as fit, the remaining experts stay in RAM (locked when they fit), and what does not
fit in RAM stays memory-mapped on disk and streams through the page cache.

The result is a list of llama.cpp tensor-override rules (``tensor_buft_overrides``, the same thing as
``-ot PATTERN=DEVICE`` on llama.cpp's command line) plus the bytes per tier and a decode-speed estimate
from the bytes each token reads from each tier.
"""

from __future__ import annotations

from dataclasses import dataclass

from localr1.budget import Budget, Candidate, placement_tps
from localr1.hardware import Hardware
from localr1.memory import estimate, expert_host_compute_bytes, expert_staging_bytes
from localr1.request import OFFLOAD_MODES
from localr1.units import GiB

MODES = OFFLOAD_MODES


@dataclass(frozen=True)
class Placement:
    mode: str
    n_ctx: int
    gpu_expert_layers: tuple[int, ...]
    ram_expert_layers: tuple[int, ...]
    disk_expert_layers: tuple[int, ...]
    gpu_bytes: int  # weights + KV + compute on the GPU(s)
    ram_bytes: int  # weights kept in RAM (experts and what llama.cpp keeps on the CPU)
    disk_bytes: int  # expert bytes left memory-mapped on disk
    decode_tps: float
    rules: tuple[tuple[str, str], ...]  # (regex, device) for llama.cpp, in order
    mlock: bool  # the RAM tier fits: lock it so the OS cannot page it out

    def ot_args(self) -> list[str]:
        """The same placement as llama.cpp command-line arguments (``-ngl 999 -ot ...``)."""
        out = ["-ngl", "999"]
        for pattern, device in self.rules:
            out += ["-ot", f"{pattern}={device}"]
        if self.mlock:
            out.append("--mlock")
        return out

    def describe(self) -> list[str]:
        def experts(ls: tuple[int, ...], how: str = "") -> str:
            return f"experts of layers {_ranges(ls)}{how}" if ls else "no experts"

        gpu = "hot tensors, KV cache" + (f", {experts(self.gpu_expert_layers)}" if self.gpu_expert_layers else "")
        return [
            f"GPU   {self.gpu_bytes / GiB:7.1f} GiB  {gpu}",
            f"RAM   {self.ram_bytes / GiB:7.1f} GiB  {experts(self.ram_expert_layers, ' (locked)' if self.mlock else '')}",
            f"disk  {self.disk_bytes / GiB:7.1f} GiB  {experts(self.disk_expert_layers, ' (memory-mapped)')}",
            f"speed about {self.decode_tps:.1f} tokens/s decode (estimate from bytes per token and tier bandwidth)",
        ]


def _runs(numbers: tuple[int, ...]) -> list[tuple[int, int]]:
    """Consecutive runs, as (first, last): (3, 4, 5, 9) is [(3, 5), (9, 9)]."""
    out: list[tuple[int, int]] = []
    for x in sorted(set(numbers)):
        if out and x == out[-1][1] + 1:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return out


def _ranges(layers: tuple[int, ...]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _runs(layers))


def expert_rule(layers: tuple[int, ...]) -> str:
    """A regex matching the routed-expert tensors of these layers (llama.cpp's tensor names), with runs of
    layers written as digit ranges, as people write them for llama.cpp: layers 3-53 are
    ``([3-9]|[1-4][0-9]|5[0-3])``, not 51 numbers (the rule is printed for llama-cli users to copy)."""
    return r"^blk\.(" + number_pattern(layers) + r")\.ffn_(up|down|gate|gate_up)_exps\."


def number_pattern(numbers: tuple[int, ...]) -> str:
    """Regex alternatives that match exactly these non-negative integers (no leading zeros)."""
    return "|".join(part for lo, hi in _runs(numbers) for part in _range_pattern(lo, hi))


def _range_pattern(lo: int, hi: int) -> list[str]:
    """Alternatives for lo..hi: blocks of the form prefix, digit range, then any digits."""
    out = []
    while lo <= hi:
        digits = len(str(lo))
        hi_here = min(hi, 10**digits - 1)  # a block never spans a change in the number of digits
        k = 0  # the block covers 10**k numbers: lo's last k digits run through 0-9
        while k + 1 < digits and lo % 10 ** (k + 1) == 0 and lo + 10 ** (k + 1) - 1 <= hi_here:
            k += 1
        step = 10**k
        first = (lo // step) % 10
        n = 1  # how many such blocks follow on, as one digit range
        while first + n <= 9 and lo + (n + 1) * step - 1 <= hi_here:
            n += 1
        prefix = str(lo // (step * 10)) if lo >= step * 10 else ""
        digit = str(first) if n == 1 else f"[{first}-{first + n - 1}]"
        out.append(prefix + digit + "[0-9]" * k)
        lo += n * step
    return out


class OffloadError(Exception):
    pass


def plan_offload(
    c: Candidate,
    hw: Hardware,
    n_ctx: int,
    *,
    mode: str = "auto",
    gpu_experts: int | None = None,
    budget: Budget | None = None,
    kv_type: str = "f16",
) -> Placement:
    """Place a MoE model's tensors; raises OffloadError (with the reason) when the hot part does not fit."""
    if mode not in MODES:
        raise OffloadError(f"--offload must be one of {', '.join(MODES)}")
    if not c.arch.is_moe:
        raise OffloadError(f"{c.label} is not a mixture-of-experts model")
    budget = budget or Budget.of(hw)
    w = c.weights
    experts = list(w.expert_layers)
    moe_layers = [i for i, b in enumerate(experts) if b > 0]
    # everything on the GPU except the routed experts (token embeddings stay on the CPU, as llama.cpp does)
    full = estimate(c.arch, w, n_ctx, -1, kv_type=kv_type)
    hot_gpu = full.gpu_total - sum(experts)
    if hot_gpu > budget.gpu:
        raise OffloadError(
            f"the hot tensors and KV cache need {hot_gpu / GiB:.1f} GiB of GPU memory, {budget.gpu / GiB:.1f} GiB usable"
        )
    # experts left in RAM need room on the GPU for one of their tensors at a time (op offload, prompts)
    staging = expert_staging_bytes(w, moe_layers)
    room = budget.gpu - hot_gpu - (0 if mode == "gpu" else staging)
    on_gpu: list[int] = []
    if mode == "gpu":
        on_gpu = moe_layers
    elif mode != "ram":
        limit = len(moe_layers) if gpu_experts is None else max(0, min(gpu_experts, len(moe_layers)))
        for layer in reversed(moe_layers):  # like llama.cpp's --n-cpu-moe: the first layers' experts stay on the CPU
            if len(on_gpu) >= limit or experts[layer] > room:
                break
            on_gpu.append(layer)
            room -= experts[layer]
    if mode == "gpu" and sum(experts[i] for i in on_gpu) > room:
        raise OffloadError("--offload gpu: the experts do not fit in GPU memory")
    on_gpu_set = set(on_gpu)
    rest = [i for i in moe_layers if i not in on_gpu_set]
    if rest and room < 0:
        raise OffloadError(
            f"the hot tensors, KV cache and room to stream the experts through need "
            f"{(hot_gpu + staging) / GiB:.1f} GiB of GPU memory, {budget.gpu / GiB:.1f} GiB usable"
        )
    host_compute = expert_host_compute_bytes(c.arch) if rest else 0  # the CPU computes the experts it holds
    ram_room = max(0, budget.ram - full.cpu_total - host_compute)  # embeddings, host buffers
    in_ram: list[int] = []
    on_disk: list[int] = []
    for layer in rest:
        if experts[layer] <= ram_room:
            in_ram.append(layer)
            ram_room -= experts[layer]
        else:
            on_disk.append(layer)
    if on_disk and mode == "ram":
        raise OffloadError("--offload ram: the experts do not fit in RAM")
    if on_disk and budget.disk is not None and c.path is None and w.total > budget.disk:
        raise OffloadError("not enough disk for the model file")
    gpu_bytes = hot_gpu + sum(experts[i] for i in on_gpu) + (expert_staging_bytes(w, rest) if rest else 0)
    ram_bytes = full.cpu_total + host_compute + sum(experts[i] for i in in_ram)
    disk_bytes = sum(experts[i] for i in on_disk)
    # the same speed model as a plain plan: dense weights and the active experts where they lie, a quarter of
    # the KV cache (the hot part's figure also holds the KV cache and compute buffer, which are not weights)
    decode_tps = placement_tps(
        hw,
        c.arch,
        gpu_dense=full.gpu_weights - sum(experts),
        cpu_dense=max(full.cpu_weights - w.embd, 0),
        gpu_experts=sum(experts[i] for i in on_gpu),
        cpu_experts=sum(experts[i] for i in in_ram),
        disk_experts=disk_bytes,
        gpu_kv=full.gpu_kv,
        cpu_kv=full.cpu_kv,
        quant=c.quant,
    )
    cpu_layers = tuple(sorted(in_ram + on_disk))
    rules = ((expert_rule(cpu_layers), "CPU"),) if cpu_layers else ()
    return Placement(
        mode=mode,
        n_ctx=n_ctx,
        gpu_expert_layers=tuple(sorted(on_gpu)),
        ram_expert_layers=tuple(sorted(in_ram)),
        disk_expert_layers=tuple(sorted(on_disk)),
        gpu_bytes=gpu_bytes,
        ram_bytes=ram_bytes,
        disk_bytes=disk_bytes,
        decode_tps=decode_tps,
        rules=rules,
        mlock=not on_disk and bool(in_ram),
    )
