"""``localr1 eval``: how well this build reasons, on problems with known answers, and at what thinking cost."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from localr1 import __version__
from localr1.cli import options as opt
from localr1.cli.helptext import command_help
from localr1.cli.state import command, handle_errors
from localr1.printable import printable
from localr1.text.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

HELP = """Measure how well this build reasons: problems with known answers through the same engine and prompt as
`ask --math`, the final \\boxed{} answer checked with math-verify, pass@1 averaged over --samples (the R1
paper's metric), majority vote, thinking and answer tokens, time and speed.

Runs are saved as they go (one JSONL line per sample, with the build, sampling, budget and hardware) and
resume: Ctrl-C keeps every finished sample, and the same command continues. --budgets draws accuracy against
thinking tokens (and seconds) in the terminal and as an SVG file; --compare sets two runs side by side with
a paired significance estimate.

Examples:
$ localr1 eval r1:7b
$ localr1 eval r1:7b --samples 4 --limit 10
$ localr1 eval r1:1.5b --budgets 256,1024,4096
$ localr1 eval r1:7b --suite MATH-500.jsonl --think-budget 2048 --json
$ localr1 eval --compare ~/.local/share/localr1/eval/r1-7b-basic ~/.local/share/localr1/eval/r1-14b-basic
"""

BudgetsOpt = Annotated[
    str | None,
    typer.Option(
        "--budgets", help="Thinking budgets to sweep, e.g. 512,1024,4096 (none: unbounded).", show_default=False
    ),
]


def parse_budgets(text: str | None, single: int | None) -> list[int | None]:
    from localr1.errors import UsageError

    if text is None:
        return [single]
    if single is not None:
        raise UsageError("give --think-budget or --budgets, not both")
    out: list[int | None] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part in ("none", "off", "unbounded"):
            value = None
        elif part.isascii() and part.isdigit() and int(part) > 0:  # "²".isdigit(), but int("²") fails
            value = int(part)
        else:
            raise UsageError(f"--budgets: {part!r} is not a token count", hint="Write them like 512,1024,4096.")
        if value not in out:
            out.append(value)
    if not out:
        raise UsageError("--budgets is empty", hint="Write them like 512,1024,4096.")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


class _Progress:
    """n/N, ETA and the accuracy so far: a live line on a terminal, a line per 10% elsewhere."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done, self.right, self.new = total, done, 0, 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.tenth = -1

    def __call__(self, sample) -> None:
        self.done += 1
        self.new += 1
        self.right += sample.correct
        elapsed = time.monotonic() - self.started
        left = elapsed / self.new * (self.total - self.done)
        pct = 100 * self.done / self.total if self.total else 100.0
        text = (
            f"[{self.done}/{self.total}] {pct:3.0f}% · {_duration(left)} left · "
            f"{self.right}/{self.new} right this session · last: {printable(sample.problem, limit=40)} "
            f"{'✓' if sample.correct else '✗'} ({sample.thinking_tokens} thinking tokens)"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
        elif int(pct // 10) > self.tenth:
            self.tenth = int(pct // 10)
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self.new:
            sys.stderr.write("\r\x1b[2K")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _budget_name(budget: int | None) -> str:
    return "unbounded" if budget is None else f"{budget:,}"


def result_lines(results, *, per_problem: bool) -> list[str]:
    lines = [
        f"{'BUDGET':>10} {'PASS@1':>7} {'MAJ':>6} {'THINK':>7} {'ANSWER':>7} {'S/PROB':>7} {'TOK/S':>6} "
        f"{'CUT':>5} {'SAMPLES':>8}"
    ]
    for r in results:
        lines.append(
            f"{_budget_name(r.budget):>10} {100 * r.pass_at_1:6.1f}% {100 * r.majority:5.1f}% {r.thinking_tokens:7.0f} "
            f"{r.answer_tokens:7.0f} {r.seconds:7.1f} {r.decode_tps:6.1f} {100 * r.cut:4.0f}% {r.samples:8}"
        )
    if per_problem:
        for r in results:
            lines += ["", f"Per problem (budget {_budget_name(r.budget)}):"]
            for p in r.per_problem:
                mark = "✓" if p.majority else "✗"
                lines.append(
                    f"  {printable(p.problem):24.24} pass@1 {100 * p.pass_at_1:5.1f}%  vote {mark} "
                    f"{printable(str(p.majority_answer))[:18]:18} "
                    f"think {p.thinking_tokens:6.0f}  {p.seconds:6.1f} s"
                )
    return lines


@command(name="eval", help=command_help(HELP), no_args_is_help=False)
@handle_errors
@opt.simulated
def evaluate_command(
    model: str | None = typer.Argument(None, help="A .gguf file or a catalog name (default: the best fit)."),
    model_option: opt.ModelOpt = None,
    suite: str = typer.Option("basic", "--suite", help="basic (localr1's own 36 problems) or a JSONL file."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N problems.", min=1),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per problem (pass@1 is their mean).", min=1),
    think_budget: opt.ThinkBudgetOpt = None,
    budgets: BudgetsOpt = None,
    max_tokens: int = typer.Option(8192, "--max-tokens", help="Longest reply per sample.", min=1),
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(DEFAULT_TOP_P, "--top-p", help="Nucleus sampling threshold."),
    seed: int = typer.Option(0, "--seed", help="Base seed: each (problem, sample) gets its own from it."),
    out: Annotated[
        Path | None, typer.Option("--out", help="The run's folder (default: one per model and suite).")
    ] = None,
    fresh: bool = typer.Option(False, "--fresh", help="Start the run over instead of continuing it."),
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            "--compare", help="Compare two saved runs (their folders) instead of running.", show_default=False
        ),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the accuracy curve as SVG here.")] = None,
    per_problem: bool = typer.Option(False, "--per-problem", help="Also list each problem's result."),
    json_out: opt.JsonOpt = False,
    ctx: opt.CtxOpt = None,
    threads: opt.ThreadsOpt = None,
    gpu_layers: opt.GpuLayersOpt = None,
    offline: opt.OfflineOpt = False,
    kv_type: opt.KvTypeOpt = None,
    workers: opt.WorkersOpt = None,
    speculate: opt.SpeculateOpt = None,
    draft: opt.DraftOpt = None,
    server: opt.ServerOpt = None,
    simulate=None,  # the simulation flags, as one Simulation (see options.simulated)
) -> None:
    model = opt.one_model(model, model_option)
    if compare is not None:
        _compare(compare, plot=plot, json_out=json_out)
        return
    from localr1.cli.ask import cancel_on_sigint
    from localr1.cli.engines import open_engine
    from localr1.evaluation.runs import open_run
    from localr1.evaluation.suites import load_suite
    from localr1.paths import data_dir
    from localr1.text.sampling import Sampling

    budget_list = parse_budgets(budgets, think_budget)
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens).validate()
    for b in budget_list:
        Sampling(think_budget=b).validate()
    suite_name, problems = load_suite(suite)
    problems = problems[:limit] if limit else problems
    request = opt.load_request(model, ctx=ctx, gpu_layers=gpu_layers, threads=threads, offline=offline,
                               simulate=simulate, kv_type=kv_type, workers=workers,
                               speculate=speculate, draft=draft)  # fmt: skip
    cancel = threading.Event()
    with cancel_on_sigint(cancel):
        engine, label, path = open_engine(request, server, model, cancel)
        try:
            info = engine.info
            meta = _meta(label, path, info, suite_name, sampling, seed)
            folder = out or data_dir() / "eval" / f"{_slug(label)}-{_slug(suite_name)}"
            run = open_run(folder, meta, fresh=fresh)
            _run(engine, run, folder, label, suite_name, problems, samples, budget_list, sampling, seed, cancel)
        finally:
            engine.close()
    _report(run, meta, problems, samples, budget_list, plot=plot, json_out=json_out, per_problem=per_problem)


def _run(engine, run, folder, label: str, suite_name: str, problems, samples: int, budget_list, sampling, seed, cancel):
    """The samples not done yet, with progress; Ctrl-C keeps what finished and says how to continue."""
    from localr1.evaluation.runs import evaluate

    total = len(budget_list) * len(problems) * samples
    done_before = len(run.done_keys() & _wanted(problems, samples, budget_list))
    if done_before:
        sys.stderr.write(f"Continuing {folder}: {done_before} of {total} samples are done.\n")
    sys.stderr.write(f"Evaluating {label} on {suite_name}: {len(problems)} problems × {samples} samples"
                     f"{' × ' + str(len(budget_list)) + ' budgets' if len(budget_list) > 1 else ''}\n")  # fmt: skip
    progress = _Progress(total, done_before)
    try:
        evaluate(engine, run, problems, samples=samples, budgets=budget_list, sampling=sampling, seed=seed,
                 on_sample=progress, cancel=cancel)  # fmt: skip
    except KeyboardInterrupt:
        progress.end()
        sys.stderr.write(
            f"Interrupted: {len(run.samples)} samples are saved in {folder}; run the same command to continue.\n"
        )
        raise typer.Exit(130) from None
    progress.end()


def _report(run, meta: dict, problems, samples: int, budget_list, *, plot, json_out: bool, per_problem: bool) -> None:
    """The results of a run for the problems and budgets asked for: summary.json, the curve, the table."""
    from localr1.evaluation.report import summarise

    label, suite_name = meta["model"], meta["suite"]
    wanted = _wanted(problems, samples, budget_list)
    run.samples = [s for s in run.samples if s.key in wanted]
    results = summarise(run)
    order = {b: i for i, b in enumerate(budget_list)}
    results.sort(key=lambda r: order.get(r.budget, len(order)))
    summary = {"run": str(run.folder), "meta": meta, "results": [r.to_dict() for r in results]}
    (run.folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    svg = None
    if len(results) > 1 or plot:
        from localr1.evaluation.plot import svg_plot

        svg = svg_plot([(label, results)], plot or run.folder / "curve.svg", title=f"{label} on {suite_name}")
    if json_out:
        summary["plot"] = str(svg) if svg else None
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return
    sys.stdout.write(f"{label} on {suite_name} ({len(problems)} problems, {samples} samples each)\n")
    sys.stdout.write("\n".join(result_lines(results, per_problem=per_problem)) + "\n")
    if len(results) > 1:
        from localr1.evaluation.plot import terminal_plot

        sys.stdout.write("\n" + terminal_plot([(label, results)]) + "\n")
    sys.stdout.write(f"\nRun: {run.folder}" + (f"  ·  curve: {svg}" if svg else "") + "\n")


def _meta(label: str, path, info, suite_name: str, sampling, seed: int) -> dict:
    """A run's header: what makes two runs the same run (model, suite, sampling, seed) and where it ran."""
    return {
        "model": label,
        "path": str(path),
        "quant": info.quant,
        "suite": suite_name,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": seed,
        "n_ctx": info.n_ctx,
        "n_gpu_layers": info.n_gpu_layers,
        "localr1": __version__,
        "llama_cpp_python": _llama_version(),
        "hardware": _hardware(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _wanted(problems, samples: int, budgets: list[int | None]) -> set:
    return {(p.id, k, b) for b in budgets for p in problems for k in range(samples)}


def _llama_version() -> str | None:
    from localr1.machine.builds import llama_cpp_python_version

    return llama_cpp_python_version()


def _hardware() -> dict:
    from localr1.machine.hardware import machine

    try:
        hw = machine(backends=False)
    except Exception:  # noqa: BLE001 - the record is informative; a failed probe must not stop the run
        return {}
    return {"cpu": hw.cpu, "cores": hw.physical_cores, "ram": hw.ram_total, "gpus": [g.name for g in hw.gpus]}


def _compare(folders: tuple[Path, Path], *, plot: Path | None, json_out: bool) -> None:
    from localr1.evaluation.report import compare, summarise
    from localr1.evaluation.runs import load_run

    a, b = (load_run(f) for f in folders)
    rows = compare(a, b)
    # the run files' own words (they may have been edited, or come from someone else): printed safe
    name_a, name_b = (printable(str(r.meta.get("model", k)), limit=80) for r, k in ((a, "A"), (b, "B")))
    if not rows:
        from localr1.errors import UsageError

        raise UsageError("the two runs share no problem at the same thinking budget", hint="Compare runs of one suite.")
    svg = None
    series = [(f"A: {name_a}", summarise(a)), (f"B: {name_b}", summarise(b))]
    if plot or any(len(s[1]) > 1 for s in series):
        from localr1.evaluation.plot import svg_plot

        # beside run B's samples (its folder, also when it was given as its samples.jsonl)
        svg = svg_plot(series, plot or b.folder / "compare.svg", title=f"{name_a} vs {name_b}")
    if json_out:
        out = {
            "a": {"run": str(folders[0]), "model": name_a},
            "b": {"run": str(folders[1]), "model": name_b},
            "comparisons": [r.__dict__ for r in rows],
            "plot": str(svg) if svg else None,
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    sys.stdout.write(f"A: {name_a} ({folders[0]})\nB: {name_b} ({folders[1]})\n\n")
    sys.stdout.write(f"{'BUDGET':>10} {'PROBLEMS':>8} {'A PASS@1':>9} {'B PASS@1':>9} {'B-A':>7} {'p':>7} "
                     f"{'A THINK':>8} {'B THINK':>8}\n")  # fmt: skip
    for r in rows:
        sys.stdout.write(
            f"{_budget_name(r.budget):>10} {r.problems:8} {100 * r.a:8.1f}% {100 * r.b:8.1f}% "
            f"{100 * r.difference:+6.1f}% {r.p_value:7.3f} {r.a_thinking:8.0f} {r.b_thinking:8.0f}\n"
        )
    sys.stdout.write(
        "\np: two-sided, paired by problem (sign-flip permutation test); below 0.05 the difference is unlikely"
        " to be chance.\n"
    )
    if any(len(s[1]) > 1 for s in series):
        from localr1.evaluation.plot import terminal_plot

        sys.stdout.write("\n" + terminal_plot(series) + "\n")
    if svg:
        sys.stdout.write(f"Curve: {svg}\n")
