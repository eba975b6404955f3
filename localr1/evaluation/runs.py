"""Running a suite through an engine, one sample at a time, into a resumable JSONL run.

A run is a folder: ``samples.jsonl`` holds a header line (``{"meta": ...}``: the build, quant, sampling,
suite and hardware) and then one line per finished sample, appended and flushed as each ends, so Ctrl-C
loses only the sample in flight and running the same command again continues where it stopped.
``summary.json`` is written at the end (evaluation/report.py).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localr1.errors import UsageError
from localr1.evaluation.answers import final_answer, is_equivalent
from localr1.evaluation.suites import Problem
from localr1.events import Done, collect
from localr1.text.prompt import render, user_turn
from localr1.text.sampling import Sampling

SAMPLES = "samples.jsonl"
# what must match for a run to continue: another model or other sampling is another run
SAME_RUN_KEYS = ("model", "quant", "suite", "temperature", "top_p", "max_tokens", "seed")


@dataclass(frozen=True)
class Sample:
    problem: str  # Problem.id
    sample: int  # 0..K-1
    budget: int | None  # the thinking budget (None: unbounded)
    extracted: str | None
    correct: bool
    thinking_tokens: int  # the model's own (forced text not counted)
    answer_tokens: int
    completion_tokens: int
    cut: bool  # the budget ended the thinking
    finish_reason: str
    seconds: float
    decode_tps: float
    answer: str = ""  # the reply's answer channel (for reading a run back)

    @property
    def key(self) -> tuple[str, int, int | None]:
        return (self.problem, self.sample, self.budget)


@dataclass
class Run:
    folder: Path
    meta: dict
    samples: list[Sample] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / SAMPLES

    def done_keys(self) -> set[tuple[str, int, int | None]]:
        return {s.key for s in self.samples}

    def append(self, sample: Sample) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(sample), ensure_ascii=False) + "\n")
            f.flush()
        self.samples.append(sample)


def open_run(folder: Path, meta: dict, *, fresh: bool = False) -> Run:
    """The run in ``folder``: continued when its header matches ``meta``, else a clear error (or a new run
    with ``fresh``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SAMPLES
    if fresh and path.exists():
        path.unlink()
    if not path.exists():
        path.write_text(json.dumps({"meta": meta}, ensure_ascii=False) + "\n", encoding="utf-8")
        return Run(folder, meta)
    run = load_run(folder)
    different = [k for k in SAME_RUN_KEYS if run.meta.get(k) != meta.get(k)]
    if different:
        what = ", ".join(f"{k} {run.meta.get(k)!r} (now {meta.get(k)!r})" for k in different)
        raise UsageError(
            f"{folder} holds a run with other settings: {what}",
            hint="Use another --out folder, or --fresh to start this one over.",
        )
    return run


def load_run(folder: Path) -> Run:
    """A saved run (a folder, or its samples.jsonl); a torn last line (a killed process) is skipped."""
    folder = Path(folder)
    path = folder if folder.is_file() else folder / SAMPLES
    if not path.is_file():
        raise UsageError(f"no eval run in {folder}", hint="Give the --out folder of a `localr1 eval` run.")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        meta = json.loads(lines[0])["meta"]
    except (IndexError, ValueError, RecursionError, KeyError, TypeError):  # (JSONDecodeError is a ValueError)
        meta = None
    if not isinstance(meta, dict):
        raise UsageError(f"{path} is not a localr1 eval run (no header line)")
    samples = []
    for n, line in enumerate(lines[1:], 2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the process died
        except (ValueError, RecursionError):  # a 5,000-digit number, a line of 100,000 '['
            raise UsageError(
                f"{path} line {n} is not a sample of a localr1 eval run", hint="Was it edited by hand?"
            ) from None
        sample = _sample(record)
        if sample is None:
            raise UsageError(f"{path} line {n} is not a sample of a localr1 eval run", hint="Was it edited by hand?")
        samples.append(sample)
    return Run(path.parent, meta, samples)


# each field's types in a saved sample (a run file may have been edited, or be another program's)
_SAMPLE_TYPES = {
    "problem": (str,), "sample": (int,), "budget": (int, type(None)), "extracted": (str, type(None)),
    "correct": (bool,), "thinking_tokens": (int,), "answer_tokens": (int,), "completion_tokens": (int,),
    "cut": (bool,), "finish_reason": (str,), "seconds": (int, float), "decode_tps": (int, float),
}  # fmt: skip


def _sample(record) -> Sample | None:
    if not isinstance(record, dict):
        return None
    for key, types in _SAMPLE_TYPES.items():
        value = record.get(key, ...)
        bool_as_int = isinstance(value, bool) and bool not in types
        if value is ... or not isinstance(value, types) or bool_as_int:
            return None
    answer = record.get("answer", "")
    return Sample(**{k: record[k] for k in _SAMPLE_TYPES}, answer=answer if isinstance(answer, str) else "")


def sample_seed(base: int, problem_id: str, sample: int) -> int:
    """A fixed seed per (problem, sample): the same run gives the same samples, whatever is resumed."""
    return (base + zlib.crc32(problem_id.encode()) + 1_000_003 * sample) % 2**32


def run_one(engine: Any, problem: Problem, sampling: Sampling, cancel=None) -> tuple[str, str, Done | None, float]:
    """One reply to one problem, with ``ask --math``'s prompt: (thinking, answer, done, seconds)."""
    prompt = render(user_turn(problem.problem, math=True), engine.info.chat_format)
    started = time.perf_counter()
    thinking, answer, done = collect(engine.stream(prompt, sampling, cancel=cancel))
    return thinking, answer, done, time.perf_counter() - started


def _model_thinking(done: Done) -> int:
    """The model's thinking tokens without a budget: the reasoning channel's, less the "</think>" that closed it
    (a ThinkingControl counts the same way when a budget is set)."""
    closed = done.usage.reasoning_tokens > 0 and not done.reasoning_unfinished
    return max(done.usage.reasoning_tokens - int(closed), 0)


def evaluate(
    engine: Any,
    run: Run,
    problems: Iterable[Problem],
    *,
    samples: int,
    budgets: list[int | None],
    sampling: Sampling,
    seed: int,
    on_sample: Callable[[Sample], None] | None = None,
    cancel=None,
) -> Run:
    """Every (budget, problem, sample) the run lacks, in that order; each saved as it ends."""
    problems = list(problems)
    have = run.done_keys()
    for budget in budgets:
        for problem in problems:
            for k in range(samples):
                if (problem.id, k, budget) in have:
                    continue
                one = Sampling(**{**asdict(sampling), "seed": sample_seed(seed, problem.id, k), "think_budget": budget})
                thinking, answer, done, seconds = run_one(engine, problem, one.validate(), cancel)
                if done is None or done.finish_reason == "cancelled":
                    raise KeyboardInterrupt  # stopped mid-sample: nothing half-done is saved
                report = done.thinking
                forced = report.forced_tokens if report else 0
                # the box is looked for in the answer, and in the thinking when the reply was cut off there
                extracted = final_answer(answer) or (final_answer(thinking) if done.reasoning_unfinished else None)
                result = Sample(
                    problem=problem.id,
                    sample=k,
                    budget=budget,
                    extracted=extracted,
                    correct=is_equivalent(extracted, problem.answer),
                    thinking_tokens=report.model_tokens if report else _model_thinking(done),
                    answer_tokens=max(done.usage.completion_tokens - done.usage.reasoning_tokens - forced, 0),
                    completion_tokens=done.usage.completion_tokens,
                    cut=bool(report and report.cut),
                    finish_reason=done.finish_reason,
                    seconds=round(seconds, 3),
                    decode_tps=round(done.timings.decode_tps, 2),
                    answer=answer[-2000:],
                )
                run.append(result)
                if on_sample is not None:
                    on_sample(result)
    return run
