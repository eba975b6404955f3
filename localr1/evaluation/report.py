"""What a run says: pass@1 averaged over K samples (the R1 paper's metric), majority vote, thinking and answer
tokens, time and speed, per problem and per thinking budget; and two runs compared, paired by problem."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass

from localr1.evaluation.answers import is_equivalent
from localr1.evaluation.runs import Run, Sample


@dataclass(frozen=True)
class ProblemResult:
    problem: str
    samples: int
    pass_at_1: float  # the share of its samples that are right
    majority: bool  # the most common answer is right
    majority_answer: str | None
    thinking_tokens: float  # means over the samples
    answer_tokens: float
    seconds: float
    cut: int  # samples the budget cut


@dataclass(frozen=True)
class BudgetResult:
    budget: int | None
    problems: int
    samples: int
    pass_at_1: float  # the mean of the problems' pass@1
    majority: float
    thinking_tokens: float
    answer_tokens: float
    seconds: float  # mean per sample
    total_seconds: float
    decode_tps: float
    cut: float  # share of samples the budget cut
    per_problem: tuple[ProblemResult, ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["per_problem"] = [asdict(p) for p in self.per_problem]
        return out


def _majority(samples: list[Sample]) -> tuple[str | None, bool]:
    """The most common extracted answer (equivalent answers counted together), and whether it is right."""
    groups: list[list[Sample]] = []
    for s in samples:
        if s.extracted is None:
            continue
        for group in groups:
            if group[0].extracted == s.extracted or is_equivalent(s.extracted, group[0].extracted or ""):
                group.append(s)
                break
        else:
            groups.append([s])
    if not groups:
        return None, False
    best = max(groups, key=len)  # ties: the first answer given
    return best[0].extracted, bool(best[0].correct)


def summarise(run: Run) -> list[BudgetResult]:
    """One result per thinking budget of the run (in the order first run)."""
    by_budget: dict[int | None, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in run.samples:
        by_budget[s.budget][s.problem].append(s)
    out = []
    for budget, per_problem in by_budget.items():
        rows = []
        for pid, ss in per_problem.items():
            answer, right = _majority(ss)
            n = len(ss)
            rows.append(
                ProblemResult(
                    problem=pid,
                    samples=n,
                    pass_at_1=sum(s.correct for s in ss) / n,
                    majority=right,
                    majority_answer=answer,
                    thinking_tokens=sum(s.thinking_tokens for s in ss) / n,
                    answer_tokens=sum(s.answer_tokens for s in ss) / n,
                    seconds=sum(s.seconds for s in ss) / n,
                    cut=sum(s.cut for s in ss),
                )
            )
        every = [s for ss in per_problem.values() for s in ss]
        total_s = sum(s.seconds for s in every)
        tokens = sum(s.completion_tokens for s in every)
        out.append(
            BudgetResult(
                budget=budget,
                problems=len(rows),
                samples=len(every),
                pass_at_1=sum(r.pass_at_1 for r in rows) / len(rows),
                majority=sum(r.majority for r in rows) / len(rows),
                thinking_tokens=sum(s.thinking_tokens for s in every) / len(every),
                answer_tokens=sum(s.answer_tokens for s in every) / len(every),
                seconds=total_s / len(every),
                total_seconds=total_s,
                decode_tps=tokens / total_s if total_s > 0 else 0.0,
                cut=sum(s.cut for s in every) / len(every),
                per_problem=tuple(rows),
            )
        )
    return out


@dataclass(frozen=True)
class Comparison:
    budget: int | None
    problems: int  # in both runs
    a: float  # pass@1 of A on those problems
    b: float
    difference: float  # b - a
    p_value: float  # two-sided, paired (sign-flip permutation over problems)
    a_thinking: float
    b_thinking: float


def paired_p_value(differences: list[float], *, rounds: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value that the mean paired difference is 0: every sign pattern when there are few
    non-zero differences (exact), else a fixed-seed random sample of them."""
    d = [x for x in differences if x != 0]
    if not d:
        return 1.0
    observed = abs(sum(d))
    if len(d) <= 16:
        hits = total = 0
        for mask in range(1 << len(d)):
            total += 1
            s = sum(-x if mask >> i & 1 else x for i, x in enumerate(d))
            hits += abs(s) >= observed - 1e-12
        return hits / total
    rng = random.Random(seed)
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= observed - 1e-12 for _ in range(rounds))
    return (hits + 1) / (rounds + 1)


def compare(a: Run, b: Run) -> list[Comparison]:
    """Per thinking budget both runs have: pass@1 on the problems both ran, and the paired p-value."""
    out = []
    results_a = {r.budget: r for r in summarise(a)}
    results_b = {r.budget: r for r in summarise(b)}
    for budget in [x for x in results_a if x in results_b]:
        pa = {p.problem: p for p in results_a[budget].per_problem}
        pb = {p.problem: p for p in results_b[budget].per_problem}
        common = [pid for pid in pa if pid in pb]
        if not common:
            continue
        diffs = [pb[pid].pass_at_1 - pa[pid].pass_at_1 for pid in common]
        n = len(common)
        out.append(
            Comparison(
                budget=budget,
                problems=n,
                a=sum(pa[p].pass_at_1 for p in common) / n,
                b=sum(pb[p].pass_at_1 for p in common) / n,
                difference=sum(diffs) / n,
                p_value=paired_p_value(diffs),
                a_thinking=sum(pa[p].thinking_tokens for p in common) / n,
                b_thinking=sum(pb[p].thinking_tokens for p in common) / n,
            )
        )
    return out
