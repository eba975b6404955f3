"""Choosing the model, quant, context and GPU layers that fit this machine, and saying why.

Pure logic: hardware and candidates in, a :class:`Plan` out. Candidates are tried best expected quality
first (the mean of the published AIME 2024 and GPQA scores, discounted for the quant); for each, the
largest context up to the one asked for (exactly the one asked for when the user set it), with every layer
on the GPU if that fits, otherwise as many layers as fit (partial offload) when RAM holds the rest and the
estimated decode speed stays usable. Every budget keeps a safety margin. Each try is recorded, so
``--explain`` can say what did not fit and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from localr1.fit.capacity import Budget, Candidate, placement_tps
from localr1.fit.memory import MemoryEstimate, estimate, gpu_repeating_layers, kv_cache_bytes, kv_type_fits
from localr1.fit.offload import OffloadError, plan_offload
from localr1.machine.hardware import Hardware
from localr1.units import GiB

MIN_CTX = 8192  # R1 often thinks past 4k tokens; an explicit --ctx may still go lower
DEFAULT_CTX = 16384  # R1 thinks for thousands of tokens before it answers
DEFAULT_MIN_TPS = 5.0


@dataclass(frozen=True)
class Attempt:
    label: str
    n_ctx: int
    n_gpu_layers: int
    ok: bool
    reason: str
    decode_tps: float | None = None  # the estimated speed where it fitted (too slow, or chosen)


@dataclass(frozen=True)
class Plan:
    candidate: Candidate
    n_ctx: int
    n_gpu_layers: int  # llama.cpp's meaning: -1 all
    memory: MemoryEstimate
    decode_tps: float
    mode: str  # gpu | partial | cpu | unified | offload
    budget: Budget
    attempts: tuple[Attempt, ...] = ()
    notes: tuple[str, ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()  # llama.cpp tensor-override rules (offload mode)
    mlock: bool = False
    placement: object | None = None  # offload.Placement, for MoE models placed across tiers
    disk_bytes: int = 0  # weights left memory-mapped on disk (read as tokens need them, not held in RAM)
    slots: int = 1  # sequences decoded together (serve --parallel), each with n_ctx tokens of KV cache
    kv_type: str = "f16"  # how the KV cache is kept: f16, q8_0 or q4_0

    @property
    def label(self) -> str:
        return self.candidate.label

    def to_dict(self) -> dict:
        m = self.memory
        return {
            "model": self.candidate.name,
            "quant": self.candidate.quant,
            "path": str(self.candidate.path) if self.candidate.path else None,
            "downloaded": self.candidate.path is not None,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "kv_type": self.kv_type,
            "mode": self.mode,
            "expected_score": round(self.candidate.quality, 1) or None,
            "decode_tokens_per_s": round(self.decode_tps, 1),
            "memory_bytes": {
                "gpu": m.gpu_total,
                "ram": m.cpu_total,
                "weights": self.candidate.weights.total,
                "kv_cache": m.kv_total,
                "compute": m.compute_total,
            },
            "budget_bytes": {"gpu": self.budget.gpu, "ram": self.budget.ram, "disk": self.budget.disk},
            "tensor_overrides": [f"{pattern}={device}" for pattern, device in self.overrides],
            "mlock": self.mlock,
            "attempts": [{k: v for k, v in a.__dict__.items() if k != "decode_tps"} for a in self.attempts],
            "notes": list(self.notes),
        }


class NoPlanError(Exception):
    def __init__(self, attempts: list[Attempt], budget: Budget) -> None:
        super().__init__("nothing fits")
        self.attempts = attempts
        self.budget = budget


def ctx_ladder(want: int, ctx_train: int, *, keep: bool = False) -> list[int]:
    """The contexts to try, largest first: what was asked for, halving down to MIN_CTX (with ``keep``, a
    context the user set: only that one, or the model's own maximum if it is smaller)."""
    top = min(want, ctx_train) if ctx_train else want
    if top <= MIN_CTX or keep:
        return [top]
    out = [top]
    while out[-1] // 2 >= MIN_CTX:
        out.append(out[-1] // 2)
    if top > MIN_CTX and out[-1] != MIN_CTX:
        out.append(MIN_CTX)
    return out


def decode_speed(c: Candidate, est: MemoryEstimate, hw: Hardware, disk_bytes: int = 0, n_gpu_layers: int = 0) -> float:
    """Tokens/s of a plain layer-offload plan (``disk_bytes`` of routed experts left on disk): the
    bytes each tier holds, split into dense weights and routed experts, through ``placement_tps``."""
    w = c.weights
    n_layer = c.arch.n_layer
    on_gpu = gpu_repeating_layers(n_layer, n_gpu_layers)
    experts = w.expert_layers or (0,) * n_layer
    gpu_experts = sum(experts[n_layer - on_gpu :]) if on_gpu else 0
    cpu_experts = sum(experts) - gpu_experts - disk_bytes
    cpu_weights = est.cpu_weights - w.embd  # the embeddings stay on the CPU; a token reads one row
    return placement_tps(
        hw,
        c.arch,
        gpu_dense=est.gpu_weights - gpu_experts,
        cpu_dense=cpu_weights - cpu_experts - disk_bytes,
        gpu_experts=gpu_experts,
        cpu_experts=cpu_experts,
        disk_experts=disk_bytes,
        gpu_kv=est.gpu_kv,
        cpu_kv=est.cpu_kv,
        quant=c.quant,
        gpu_layers=on_gpu,
        mix=w.mix,
    )


def decode_speed_at(c: Candidate, hw: Hardware, depth: int, kv_type: str = "f16") -> float:
    """Tokens/s of ``c`` held whole on the CPU with ``depth`` tokens already in the context (what llama-bench
    tg at ``-d depth`` measures; benchmarks/cpu_estimate.py compares the two)."""
    cpu_only = replace(hw, gpus=())
    kv = kv_cache_bytes(c.arch, max(depth, 1), kv_type=kv_type)
    return placement_tps(
        cpu_only, c.arch, gpu_dense=0.0, cpu_dense=c.weights.total - c.weights.embd, cpu_kv=4 * kv, quant=c.quant,
        mix=c.weights.mix,
    )  # fmt: skip


def _fits(est: MemoryEstimate, budget: Budget, c: Candidate, allow_disk: bool) -> tuple[bool, str, int]:
    """Whether it fits, why not, and how many bytes of weights would be streamed from disk."""
    expert_bytes = sum(c.weights.expert_layers)
    if budget.unified:
        need = est.gpu_total + est.cpu_total
        over = need - budget.gpu
        if over <= 0:
            return True, "", 0
        if allow_disk and c.arch.is_moe and over <= expert_bytes:
            return True, "", int(over)  # routed experts beyond memory stay memory-mapped on disk
        return False, f"needs {need / GiB:.1f} GiB of unified memory, {budget.gpu / GiB:.1f} GiB usable", 0
    if est.gpu_total > budget.gpu:
        return False, f"GPU needs {est.gpu_total / GiB:.1f} GiB, {budget.gpu / GiB:.1f} GiB usable", 0
    extra_gpus = max(0, budget.n_gpus - 1) * est.gpu_compute  # each GPU holds its own compute buffer
    if est.gpu_total and est.gpu_total + extra_gpus > budget.gpu:
        return False, f"GPUs need {(est.gpu_total + extra_gpus) / GiB:.1f} GiB with per-GPU buffers", 0
    over = est.cpu_total - budget.ram
    if over <= 0:
        return True, "", 0
    if allow_disk and c.arch.is_moe:
        expert_cpu = expert_bytes * (est.cpu_weights / max(c.weights.total, 1))
        if over <= expert_cpu:
            return True, "", int(over)  # routed experts beyond RAM stay memory-mapped on disk
    return False, f"RAM needs {est.cpu_total / GiB:.1f} GiB, {budget.ram / GiB:.1f} GiB usable", 0


@dataclass(frozen=True)
class PlanOptions:
    """What the planner is asked for, beside the candidates and the machine."""

    want_ctx: int = DEFAULT_CTX  # per sequence
    min_tps: float = DEFAULT_MIN_TPS  # slower plans are passed over (a smaller build, or less context)
    gpu_layers: int | None = None  # the user's; None: as many as fit
    flash_attn: bool = True
    allow_disk: bool = True  # a MoE's routed experts may stay memory-mapped on disk
    offload: str = "auto"  # MoE placement: auto, gpu, ram, disk or off
    gpu_experts: int | None = None  # MoE: layers of experts on the GPU, the user's
    keep_ctx: bool = False  # the user set the context: never shrink it
    slots: int = 1  # a server's parallel sequences, each with want_ctx
    kv_type: str | None = None  # None: f16, or q8_0 where f16 does not fit


def plan_candidate(
    c: Candidate,
    hw: Hardware,
    options: PlanOptions | None = None,
    *,
    attempts: list[Attempt] | None = None,
    budget: Budget | None = None,
    **overrides: Any,
) -> Plan | None:
    """The plan for one candidate, or None. ``options`` (or the ``PlanOptions`` fields given by name):
    ``want_ctx`` is per sequence; with ``slots`` > 1 (a server's parallel requests) the KV cache holds
    ``slots`` times as much and the plan's ``n_ctx`` is still per sequence. ``kv_type`` None lets the planner
    keep the KV cache in q8_0 (half of f16, with flash attention) where f16 does not fit at a context,
    before it shrinks the context or takes a smaller build."""
    o = replace(options or PlanOptions(), **overrides)  # an unknown name is a TypeError, not ignored
    want_ctx, min_tps, gpu_layers, flash_attn, kv_type = o.want_ctx, o.min_tps, o.gpu_layers, o.flash_attn, o.kv_type
    offload, slots = o.offload, o.slots
    attempts = attempts if attempts is not None else []
    budget = budget or Budget.of(hw)
    kv_options = [kv_type] if kv_type else (["f16", "q8_0"] if flash_attn else ["f16"])
    kv_options = [kv for kv in kv_options if kv_type_fits(c.arch, kv)]
    if not kv_options:
        attempts.append(Attempt(c.label, 0, 0, False, f"its head size does not allow a {kv_type} KV cache"))
        return None
    n_layer = c.arch.n_layer
    on_gpu = bool(hw.gpus) and (hw.gpu_offload_built or hw.simulated)
    if not c.path and budget.disk is not None and c.weights.total > budget.disk:
        attempts.append(
            Attempt(
                c.label,
                0,
                0,
                False,
                f"download needs {c.weights.total / GiB:.1f} GiB of disk, {budget.disk / GiB:.1f} GiB free",
            )
        )
        return None
    slow: tuple[int, float] | None = None  # the largest context that fitted, and its speed, when too slow
    for per_seq in ctx_ladder(want_ctx, c.arch.ctx_train, keep=o.keep_ctx):
        reduced = _ctx_note(per_seq, want_ctx, c.arch.ctx_train, slow, min_tps, o.keep_ctx)
        n_ctx = per_seq * slots  # the KV cache holds every sequence's context
        if gpu_layers is not None:
            layer_options = [gpu_layers if gpu_layers >= 0 else n_layer + 1]
        elif on_gpu:
            layer_options = [n_layer + 1, *range(n_layer, -1, -1)]
        else:
            layer_options = [0]
        if c.arch.is_moe and on_gpu and gpu_layers is None and offload != "off" and not budget.unified:
            for kv in kv_options:
                placed = _offload_plan(c, hw, n_ctx, budget, o, attempts, reduced, kv)
                if isinstance(placed, Plan):
                    return replace(placed, n_ctx=per_seq, slots=slots, kv_type=kv)
                if placed is not None and slow is None:
                    slow = (per_seq, placed)
            if offload != "auto":
                continue  # a forced placement mode: no plain layer offload instead
        plan, slow_tps = _at_context(c, hw, o, budget, attempts, per_seq, n_ctx, layer_options, kv_options, reduced)
        if plan is not None:
            return plan
        if slow_tps is not None and slow is None:
            slow = (per_seq, slow_tps)
    return None


def _at_context(
    c: Candidate,
    hw: Hardware,
    o: PlanOptions,
    budget: Budget,
    attempts: list[Attempt],
    per_seq: int,
    n_ctx: int,
    layer_options: list[int],
    kv_options: list[str],
    reduced: str,
) -> tuple[Plan | None, float | None]:
    """The plan at one context with plain layer offload (most GPU layers first, then an f16 KV cache before
    q8_0), or None and the speed of the first placement that fitted but was too slow."""
    n_layer = c.arch.n_layer
    on_gpu = bool(hw.gpus) and (hw.gpu_offload_built or hw.simulated)
    min_tps, kv_type = o.min_tps, o.kv_type
    slow_tps: float | None = None
    too_slow = False
    for k in layer_options:
        # at each GPU layer count, an f16 KV cache first, then q8_0 (more layers on the GPU beat an f16 cache)
        f16_failed = "to fit"  # why an f16 cache was not taken at this layer count, for the note
        for kv in kv_options:
            est = estimate(c.arch, c.weights, n_ctx, k, flash_attn=o.flash_attn, kv_type=kv)
            ok, why, disk_bytes = _fits(est, budget, c, o.allow_disk)
            kv_note = "" if kv == "f16" else f" (KV cache {kv})"
            if not ok:
                if k in (layer_options[0], layer_options[-1]):  # full offload and CPU only, not every count
                    attempts.append(Attempt(c.label, n_ctx, k, False, why + kv_note))
                continue
            tps = decode_speed(c, est, hw, disk_bytes, k)
            if tps < min_tps:
                reason = f"fits{kv_note}, but {_too_slow(tps, min_tps)}"
                attempts.append(Attempt(c.label, n_ctx, k, False, reason, tps))
                slow_tps = tps if slow_tps is None else slow_tps
                too_slow = True  # fewer GPU layers would only be slower; a smaller KV cache may not be
                f16_failed = "for speed"
                continue
            if budget.unified or (on_gpu and k > n_layer):
                mode = "unified" if budget.unified else "gpu"
            elif k > 0:
                mode = "partial"
            else:
                mode = "cpu"
            if disk_bytes:
                mode = "offload"
            attempts.append(Attempt(c.label, n_ctx, k, True, f"fits{kv_note}: about {tps:.1f} tokens/s", tps))
            notes = [reduced] if reduced else []
            if kv != "f16" and not kv_type:
                notes.append(f"KV cache kept in {kv} (half the memory of f16) {f16_failed}")
            if disk_bytes:
                notes.append(f"{disk_bytes / GiB:.1f} GiB of routed experts stream from disk")
            k = -1 if k > n_layer else k
            plan = Plan(
                c, per_seq, k, est, tps, mode, budget, tuple(attempts), tuple(notes), disk_bytes=disk_bytes,
                slots=o.slots, kv_type=kv,
            )  # fmt: skip
            return plan, None
        if too_slow:  # every cache type tried at this layer count: fewer layers would only be slower
            break
    return None, slow_tps


def _too_slow(tps: float, min_tps: float) -> str:
    return f"about {_tps_down(tps)} tokens/s (< {min_tps:g})"


def _tps_down(tps: float) -> str:
    # rounded down: "about 5.0 tokens/s (< 5)" for 4.98 would read as a contradiction
    return f"{int(tps * 10) / 10:.1f}"


def _ctx_note(
    n_ctx: int, want_ctx: int, ctx_train: int, slow: tuple[int, float] | None, min_tps: float, kept: bool
) -> str:
    """Why the plan has less context than asked for ("" when it has all of it)."""
    if kept and ctx_train and want_ctx > ctx_train:
        return f"context capped at {ctx_train} tokens, the longest this model was trained for (asked for {want_ctx})"
    if n_ctx >= min(want_ctx, ctx_train or want_ctx):
        return ""
    if slow is not None:
        return (
            f"context reduced to {n_ctx} tokens for speed: {slow[0]} would run at about {_tps_down(slow[1])} tokens/s"
        )
    return f"context reduced to {n_ctx} tokens to fit (asked for {want_ctx})"


def _offload_plan(
    c: Candidate,
    hw: Hardware,
    n_ctx: int,
    budget: Budget,
    o: PlanOptions,
    attempts: list[Attempt],
    reduced: str,
    kv_type: str = "f16",
) -> Plan | float | None:
    """A MoE model that does not fit on the GPU whole: hot tensors there, experts by tier (see offload.py).
    The plan, or its speed when it fits but is too slow, or None."""

    mode, gpu_experts, min_tps, flash_attn = o.offload, o.gpu_experts, o.min_tps, o.flash_attn

    full = estimate(c.arch, c.weights, n_ctx, -1, flash_attn=flash_attn, kv_type=kv_type)
    whole = mode == "auto" and full.gpu_total <= budget.gpu and full.cpu_total <= budget.ram
    if whole and not hw.has_workers:
        return None  # it all fits on the GPU: the plain plan is simpler and as fast
    try:
        p = plan_offload(
            c, hw, n_ctx, mode="auto" if mode == "disk" else mode, gpu_experts=gpu_experts, budget=budget,
            kv_type=kv_type,
        )  # fmt: skip
    except OffloadError as exc:
        attempts.append(Attempt(c.label, n_ctx, -1, False, f"offload: {exc}"))
        return None
    if whole and decode_speed(c, full, hw, 0, -1) >= p.decode_tps:
        return None  # llama.cpp's own split of the layers over the machines is as fast: the simpler plan
    if p.decode_tps < min_tps:
        why = f"offload fits, but {_too_slow(p.decode_tps, min_tps)}"
        attempts.append(Attempt(c.label, n_ctx, -1, False, why, p.decode_tps))
        return p.decode_tps
    gpu_weights = p.gpu_bytes - full.gpu_kv - full.gpu_compute
    memory = MemoryEstimate(
        gpu_weights=gpu_weights,
        gpu_kv=full.gpu_kv,
        gpu_compute=full.gpu_compute,
        cpu_weights=c.weights.total - gpu_weights,
        cpu_kv=full.cpu_kv,
        cpu_compute=full.cpu_compute,
        output=full.output,
        kv_total=full.kv_total,
        compute_total=full.compute_total,
    )
    attempts.append(
        Attempt(
            c.label,
            n_ctx,
            -1,
            True,
            f"offload: hot tensors on {'one device' if p.devices else 'the GPU'}, experts by tier: "
            f"about {p.decode_tps:.1f} tokens/s",
        )
    )
    notes = [reduced] if reduced else []
    if p.disk_bytes:
        notes.append(f"{p.disk_bytes / GiB:.1f} GiB of routed experts stream from disk")
    return Plan(
        c, n_ctx, -1, memory, p.decode_tps, "offload", budget, tuple(attempts), tuple(notes), p.rules, p.mlock, p,
        disk_bytes=p.disk_bytes,
    )  # fmt: skip


def choose(candidates: list[Candidate], hw: Hardware, options: PlanOptions | None = None, **overrides: Any) -> Plan:
    """The best expected quality that fits (``options``, or the ``PlanOptions`` fields given by name); raises
    NoPlanError with every attempt when nothing does."""
    options = replace(options or PlanOptions(), **overrides)
    budget = Budget.of(hw)
    attempts: list[Attempt] = []
    for c in sorted(candidates, key=lambda c: (-c.quality, c.weights.total)):
        plan = plan_candidate(c, hw, options, attempts=attempts, budget=budget)
        if plan is not None:
            return plan
    raise NoPlanError(attempts, budget)


@dataclass
class Fallbacks:
    """Smaller versions of a plan, for a load that ran out of memory after all."""

    plan: Plan
    tried: list[tuple[int, int]] = field(default_factory=list)

    def next(self) -> tuple[int, int] | None:
        n_ctx, layers = self.tried[-1] if self.tried else (self.plan.n_ctx, self.plan.n_gpu_layers)
        n_layer = self.plan.candidate.arch.n_layer
        if layers != 0:
            current = n_layer + 1 if layers < 0 else layers
            layers = max(0, current - max(1, n_layer // 4))
        elif n_ctx > MIN_CTX:
            n_ctx //= 2
        else:
            return None
        self.tried.append((n_ctx, layers))
        return n_ctx, layers


def device_shares(gpus, gpu_bytes: int) -> list[tuple[str, int]]:
    """How llama.cpp spreads ``gpu_bytes`` over these GPUs (local and `localr1 worker`s) when no --tensor-split
    is given: in proportion to each device's free memory. The shares add up to ``gpu_bytes``."""
    free = [max(g.free, 0) for g in gpus]
    total = sum(free)
    if not gpus or total <= 0:
        return []
    shares = [gpu_bytes * f // total for f in free]
    shares[-1] += gpu_bytes - sum(shares)
    return [(g.name, b) for g, b in zip(gpus, shares, strict=True)]
