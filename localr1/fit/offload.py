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

from localr1.fit.capacity import (
    Budget,
    Candidate,
    activation_bytes,
    cpu_rate,
    device_room,
    effective_bandwidth,
    placement_tps,
    round_trip_s,
    spread_tps,
)
from localr1.fit.memory import estimate, expert_host_compute_bytes, expert_staging_bytes
from localr1.fit.request import OFFLOAD_MODES
from localr1.machine.hardware import GPU, Hardware
from localr1.units import GiB

MODES = OFFLOAD_MODES


@dataclass(frozen=True)
class DeviceShare:
    """What one device holds when `localr1 worker`s take part: the hot part (attention, shared experts, norms,
    router, output and the KV cache) on the main device, routed experts on the others."""

    device: str  # as hardware names it: "RPC1[192.168.1.20:50052]", or "this machine's GPUs"
    expert_layers: tuple[int, ...]
    bytes: int  # weights, KV cache and compute buffer on it
    hot: bool  # the main device: the hot tensors and the KV cache
    endpoint: str | None = None  # a worker's host:port

    @property
    def ggml_name(self) -> str:
        """llama.cpp's name for the device ("RPC1"): what a tensor rule names."""
        return self.device.partition("[")[0]


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
    devices: tuple[DeviceShare, ...] = ()  # per device, when workers take part (else the GPUs are one tier)
    main_device: str | None = None  # where the layers go: "local" (this machine's GPUs), a worker's "RPC1", or
    # None (llama.cpp's own split of the layers over every device, by free memory)
    local_gpus: int = 0  # with main_device "local": how many GPUs share the layers (by free memory)

    def ot_args(self) -> list[str]:
        """The same placement as llama.cpp command-line arguments (``-ngl 999 -ot ...``). llama-cli names a
        worker's buffers "RPC<its index on that worker>[host:port]", and lists the workers' devices first in
        ``-ts``."""
        out = ["-ngl", "999"]
        remote = [d for d in self.devices if d.endpoint]
        if remote:
            out[:0] = ["--rpc", ",".join(dict.fromkeys(d.endpoint for d in remote))]
            split = [1 if d.hot else 0 for d in remote]
            if self.main_device == "local":
                split += [1] * max(1, self.local_gpus)  # equal shares of the layers among this machine's GPUs
            out += ["-ts", ",".join(map(str, split))]
        buffer_names: dict[str, str] = {}
        for d in remote:
            on_worker = sum(1 for name in buffer_names.values() if name.endswith(f"[{d.endpoint}]"))
            buffer_names[d.ggml_name] = f"RPC{on_worker}[{d.endpoint}]"
        for pattern, device in self.rules:
            out += ["-ot", f"{pattern}={buffer_names.get(device, device)}"]
        if self.mlock:
            out.append("--mlock")
        return out

    def describe(self) -> list[str]:
        def experts(ls: tuple[int, ...], how: str = "") -> str:
            return f"experts of layers {_ranges(ls)}{how}" if ls else "no experts"

        gpu = "hot tensors, KV cache" + (f", {experts(self.gpu_expert_layers)}" if self.gpu_expert_layers else "")
        if self.devices:
            tiers = []
            for d in self.devices:
                held = ("hot tensors, KV cache" + (", " if d.expert_layers else "")) if d.hot else ""
                held += experts(d.expert_layers) if d.expert_layers or not d.hot else ""
                tiers.append(f"{d.device}: {d.bytes / GiB:.1f} GiB  {held}")
        else:
            tiers = [f"GPU   {self.gpu_bytes / GiB:7.1f} GiB  {gpu}"]
        return [
            *tiers,
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


def _gpu_expert_layers(
    moe_layers: list[int], experts: list[int], room: int, mode: str, gpu_experts: int | None
) -> tuple[list[int], int]:
    """The layers whose routed experts go on the GPU (the last ones first, like llama.cpp's --n-cpu-moe: the
    first layers' experts stay on the CPU), and the GPU room left."""
    if mode == "gpu":
        return list(moe_layers), room
    on_gpu: list[int] = []
    if mode != "ram":
        limit = len(moe_layers) if gpu_experts is None else max(0, min(gpu_experts, len(moe_layers)))
        for layer in reversed(moe_layers):
            if len(on_gpu) >= limit or experts[layer] > room:
                break
            on_gpu.append(layer)
            room -= experts[layer]
    return on_gpu, room


def _fill(layers: list[int], experts: list[int], room: int) -> tuple[list[int], list[int]]:
    """The layers whose experts fit in ``room`` bytes, in order, and those left over (for the next tier)."""
    kept: list[int] = []
    left: list[int] = []
    for layer in layers:
        if experts[layer] <= room:
            kept.append(layer)
            room -= experts[layer]
        else:
            left.append(layer)
    return kept, left


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
    if hw.has_workers:
        return _plan_across(c, hw, n_ctx, mode=mode, gpu_experts=gpu_experts, budget=budget, kv_type=kv_type)
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
    on_gpu, room = _gpu_expert_layers(moe_layers, experts, room, mode, gpu_experts)
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
    in_ram, on_disk = _fill(rest, experts, ram_room)
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
        gpu_layers=c.arch.n_layer,  # every layer's dense part is on the GPU
        mix=w.mix,
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


@dataclass
class _Tier:
    name: str  # "main", a worker device's hardware name, "RAM" or "disk"
    room: float
    layer_s: float  # seconds one average layer's active experts cost a token here, network included
    device: GPU | None = None
    layers: list[int] | None = None


def _tiers(hw, c, main, remote, main_room, ram_room, layer_bytes, main_trip, device_compute, act) -> list:
    """Where routed experts can go, each with its room and what a layer's experts there cost a token: the
    main device, the other workers' devices (a round trip each way), this machine's RAM, the disk."""
    main_bw = min(effective_bandwidth(g) for g in main)
    tiers = [_Tier("main", main_room, layer_bytes / main_bw)]
    for g in remote:
        if g not in main:
            cost = layer_bytes / effective_bandwidth(g) + main_trip + round_trip_s(g, act)
            tiers.append(_Tier(g.name, device_room(g) - device_compute, cost, g))
    tiers.append(_Tier("RAM", ram_room, layer_bytes / cpu_rate(hw, c.quant, c.weights.mix) + main_trip))
    # memory-mapped from disk: as much as it takes, and before a worker whose link costs more than the disk
    tiers.append(_Tier("disk", float("inf"), layer_bytes / (hw.disk_bandwidth_gbs * 1e9) + main_trip))
    return tiers


def _shares(
    main_label, main_endpoint, hot, main_layers, cpu_layers, local, helpers, experts, w, device_compute
) -> list:
    """What each device holds: the main one every layer's hot part, its experts and the staging room for the
    experts kept here; each other device its experts and their intermediates."""
    staging = expert_staging_bytes(w, cpu_layers) if cpu_layers and local else 0
    shares = [DeviceShare(main_label, main_layers, hot + sum(experts[i] for i in main_layers) + staging, True,
                          main_endpoint)]  # fmt: skip
    for t in helpers:
        layers = tuple(sorted(t.layers))
        shares.append(DeviceShare(t.name, layers, sum(experts[i] for i in layers) + device_compute, False,
                                  t.device.endpoint))  # fmt: skip
    return shares


def _main_device(local: list, remote: list, compute: int, act: int) -> tuple[list, str, float, str, int]:
    """The device every layer goes to: this machine's GPUs, or the fastest worker device when it has none.
    (its GPUs, its name for the tensor split, the round trip to it, its label, its room)."""
    if local:
        label = local[0].name if len(local) == 1 else "this machine's GPUs"
        return local, "local", 0.0, label, sum(device_room(g) for g in local) - (len(local) - 1) * compute
    best = max(remote, key=lambda g: (g.bandwidth_gbs, device_room(g)))
    return [best], best.name.partition("[")[0], round_trip_s(best, act), best.name, device_room(best)


def _fill_tiers(tiers: list, moe_layers: list[int], experts: list[int], mode: str, gpu_experts: int | None) -> list:
    """Give each tier, cheapest per token first, the routed experts that fit in it; the layers left over."""
    limit = len(moe_layers) if gpu_experts is None else max(0, min(gpu_experts, len(moe_layers)))
    rest = list(moe_layers)
    on_devices = 0
    for tier in sorted(tiers, key=lambda t: t.layer_s):
        tier.layers = []
        is_device = tier.name not in ("RAM", "disk")
        if (is_device and mode == "ram") or (not is_device and mode == "gpu"):
            continue
        # the main device takes the last layers (like llama.cpp's --n-cpu-moe), the others the first ones
        order = list(reversed(rest)) if tier.name == "main" else list(rest)
        for i in order:
            if experts[i] > tier.room or (is_device and on_devices >= limit):
                break
            tier.layers.append(i)
            tier.room -= experts[i]
            on_devices += is_device
        rest = [i for i in rest if i not in set(tier.layers)]
    return rest


def _hops_s(main_trip: float, helpers: list, act: int, cpu_layers: int) -> float:
    """Network time per token: the embeddings (here) to a main worker and the logits back, and per layer whose
    experts are elsewhere the way there and back (through this machine: ggml's RPC does not copy between
    workers)."""
    return (
        main_trip
        + sum((main_trip + round_trip_s(t.device, act)) * len(t.layers) for t in helpers)
        + main_trip * cpu_layers
    )


def _plan_across(
    c: Candidate, hw: Hardware, n_ctx: int, *, mode: str, gpu_experts: int | None, budget: Budget, kv_type: str
) -> Placement:
    """Offload across machines (`localr1 worker`s, llama.cpp RPC): every layer's hot part and the KV cache on one
    main device — this machine's GPUs, or the fastest worker device when it has none — and the routed experts
    wherever a token pays least for them: the main device, other workers' devices, this machine's RAM, disk.

    A worker's experts cost a round trip per layer (the activations go there and back through this machine:
    ggml's RPC backend does not copy between workers), so they come after RAM unless that worker reads
    faster by more than the network costs. llama.cpp gets a tensor split that gives every layer to the main
    device and ``-ot`` rules that send each other tier's experts to its device."""
    w = c.weights
    experts = list(w.expert_layers)
    moe_layers = [i for i, b in enumerate(experts) if b > 0]
    active = c.arch.n_expert_used / c.arch.n_expert if c.arch.n_expert else 1.0
    full = estimate(c.arch, w, n_ctx, -1, kv_type=kv_type)
    hot = full.gpu_total - sum(experts)
    local = [g for g in hw.gpus if not g.remote]
    remote = [g for g in hw.gpus if g.remote]
    act = activation_bytes(c.arch)
    main, main_device, main_trip, main_label, main_room = _main_device(local, remote, full.gpu_compute, act)
    if hot > main_room:
        raise OffloadError(
            f"the hot tensors and KV cache need {hot / GiB:.1f} GiB on {main_label}, {main_room / GiB:.1f} GiB usable"
        )
    # for a prompt, llama.cpp copies RAM experts into a local GPU's compute buffer (op offload; RPC devices
    # do not take part in it): room for one of their tensors on the main device when it is this machine's
    staging = expert_staging_bytes(w, moe_layers) if local and mode != "gpu" else 0
    device_compute = host_compute = expert_host_compute_bytes(c.arch)  # whoever computes experts: intermediates
    layer_s = active * sum(experts) / max(1, len(moe_layers))  # an average layer's active expert bytes
    ram_room = max(0, budget.ram - full.cpu_total - host_compute)
    tiers = _tiers(hw, c, main, remote, main_room - hot - staging, ram_room, layer_s, main_trip, device_compute, act)
    rest = _fill_tiers(tiers, moe_layers, experts, mode, gpu_experts)
    on_disk = sorted((next(t for t in tiers if t.name == "disk").layers or []) + rest)
    if mode == "gpu" and on_disk:
        raise OffloadError("--offload gpu: the experts do not fit in the devices' memory")
    if on_disk and mode == "ram":
        raise OffloadError("--offload ram: the experts do not fit in RAM")
    if on_disk and budget.disk is not None and c.path is None and w.total > budget.disk:
        raise OffloadError("not enough disk for the model file")
    by_name = {t.name: t for t in tiers}
    main_layers = tuple(sorted(by_name["main"].layers or ()))
    in_ram = tuple(sorted(by_name["RAM"].layers or ()))
    cpu_layers = tuple(sorted(in_ram + tuple(on_disk)))
    helpers = [t for t in tiers if t.device is not None and t.layers]
    shares = _shares(main_label, main[0].endpoint, hot, main_layers, cpu_layers, bool(local), helpers, experts, w,
                     device_compute)  # fmt: skip
    disk_bytes = sum(experts[i] for i in on_disk)
    hops = _hops_s(main_trip, helpers, act, len(cpu_layers))
    decode_tps = spread_tps(
        hw,
        main=main,
        main_read=full.gpu_weights - sum(experts) + active * sum(experts[i] for i in main_layers) + full.gpu_kv / 4,
        device_reads=[(t.device, active * sum(experts[i] for i in t.layers)) for t in helpers],
        cpu_read=max(full.cpu_weights - w.embd, 0) + active * sum(experts[i] for i in in_ram),
        cpu_kv_read=full.cpu_kv / 4,
        cpu_layers=len(cpu_layers),
        gqa=c.arch.query_heads_per_kv,
        disk_read=active * disk_bytes,
        hops_s=hops,
        quant=c.quant,
        gpu_layers=c.arch.n_layer,
        mix=w.mix,
    )
    rules = tuple((expert_rule(tuple(sorted(t.layers))), t.name.partition("[")[0]) for t in helpers)
    if cpu_layers:
        rules += ((expert_rule(cpu_layers), "CPU"),)
    return Placement(
        mode=mode,
        n_ctx=n_ctx,
        gpu_expert_layers=tuple(sorted(main_layers + tuple(i for t in helpers for i in t.layers))),
        ram_expert_layers=in_ram,
        disk_expert_layers=tuple(on_disk),
        gpu_bytes=sum(d.bytes for d in shares),
        ram_bytes=full.cpu_total + (host_compute if cpu_layers else 0) + sum(experts[i] for i in in_ram),
        disk_bytes=disk_bytes,
        decode_tps=decode_tps,
        rules=rules,
        mlock=not on_disk and bool(in_ram),
        devices=tuple(shares),
        main_device=main_device,
        local_gpus=len(local),
    )
