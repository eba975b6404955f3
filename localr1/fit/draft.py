"""Where a draft model goes (speculative decoding): beside the target's plan, never instead of it.

The target is planned first, as if there were no draft. The draft then needs its weights, a KV cache for
the same context and its compute buffer on one device: the GPU when that fits in what the target's plan
leaves of it (a draft exists to be fast), else RAM. Where neither has room the draft is left out, with
the reason: a draft never costs the target a GPU layer or a token of context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from localr1.fit.capacity import Budget, Candidate
from localr1.fit.memory import estimate
from localr1.units import gib

if TYPE_CHECKING:
    from localr1.fit.planner import Plan


@dataclass(frozen=True)
class DraftPlacement:
    n_gpu_layers: int  # -1: all on the GPU; 0: on the CPU
    bytes: int  # what it takes there: weights, KV cache, compute buffer
    device: str  # "GPU" or "RAM"

    @property
    def for_auto(self) -> bool:
        """Whether ``--speculate auto`` drafts with it: on a GPU only (on a CPU a drafted token costs 0.35-0.5
        of a step to check, and a draft model on top did not pay: docs/performance.md)."""
        return self.device == "GPU"


def place_beside(draft: Candidate, plan: Plan) -> tuple[DraftPlacement | None, str]:
    """``place_draft`` beside a planner's ``Plan`` (what it takes on the GPU and in RAM, its context)."""
    return place_draft(
        draft, n_ctx=plan.n_ctx, budget=plan.budget, gpu_used=plan.memory.gpu_total,
        ram_used=plan.memory.cpu_total, kv_type=plan.kv_type,
    )  # fmt: skip


def place_draft(
    draft: Candidate, *, n_ctx: int, budget: Budget, gpu_used: int, ram_used: int, kv_type: str = "f16"
) -> tuple[DraftPlacement | None, str]:
    """The draft's placement beside a target that takes ``gpu_used`` and ``ram_used`` bytes, or None and
    why not (one clause, for "not drafting with X: ...")."""
    if draft.arch is None:
        return None, "its shape is unknown"
    on_gpu = estimate(draft.arch, draft.weights, n_ctx, -1, kv_type=kv_type)
    on_cpu = estimate(draft.arch, draft.weights, n_ctx, 0, kv_type=kv_type)
    if budget.n_gpus and not budget.unified:
        gpu_left = budget.gpu - gpu_used
        if on_gpu.gpu_total <= gpu_left and on_gpu.cpu_total <= budget.ram - ram_used:
            return DraftPlacement(-1, on_gpu.gpu_total, "GPU"), ""
    if budget.unified:
        left = budget.gpu - gpu_used - ram_used
        need = on_gpu.gpu_total + on_gpu.cpu_total
        if need <= left:
            return DraftPlacement(-1, need, "GPU"), ""
        return None, f"it needs {gib(need)} and the target leaves {gib(max(left, 0))} of unified memory"
    ram_left = budget.ram - ram_used
    if on_cpu.cpu_total <= ram_left:
        return DraftPlacement(0, on_cpu.cpu_total, "RAM"), ""
    where = "the GPU or RAM" if budget.n_gpus else "RAM"
    return None, f"it needs {gib(on_cpu.cpu_total)} and the target leaves {gib(max(ram_left, 0))} of {where}"
