"""``localr1 ask``: one question, answered on stdout, the thinking kept apart."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator

import typer

from localr1.cli import options as opt
from localr1.cli.helptext import command_help
from localr1.cli.state import command, handle_errors
from localr1.errors import UsageError
from localr1.text.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Sampling

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

HELP = """Ask an R1 model one question; the answer streams to stdout.

The model's thinking is hidden (a spinner shows while it thinks) unless --show-thinking streams it,
dimmed, to stderr. Pipes get only the answer.

Examples:
$ localr1 ask "prove that sqrt(2) is irrational" --show-thinking
$ localr1 ask "what is 3^5 mod 7?" --math --model r1:7b
$ cat question.txt | localr1 ask - --json > result.json
$ cat paper.txt | localr1 ask "what is the main result?"      # the file, then the question
$ localr1 ask "name three primes" --json-schema primes.schema.json   # the answer is JSON; the thinking is free
"""


def answer_grammar(path: str | None) -> str | None:
    """--json-schema FILE: the GBNF grammar of the schema in FILE ("json": any JSON object), for the answer."""
    if path is None:
        return None
    import json

    from localr1.engine.structured import json_grammar, schema_grammar

    if path == "json":
        return json_grammar()
    try:
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    except OSError as exc:
        raise UsageError(f"--json-schema {path}: {exc.strerror}", hint="Give a JSON schema file, or json.") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--json-schema {path} is not valid JSON: {str(exc)[:120]}") from None
    return schema_grammar(schema, f"schema in {path}")


def read_question(question: str | None) -> str:
    """The question: the argument, stdin ("-" or no argument), or both: piped text goes first and the
    argument after it, so ``cat notes.txt | localr1 ask "what is missing?"`` asks about the file."""
    if question is None or question == "-":
        if question is None and sys.stdin.isatty():
            raise UsageError("no question given", hint='Pass it as an argument: localr1 ask "your question"')
        question = _read_stdin()
    elif (piped := _piped_stdin()) and piped.strip():
        question = f"{piped.rstrip()}\n\n{question}"
    if not question.strip():
        raise UsageError("the question is empty", hint='Pass it as an argument: localr1 ask "your question"')
    return question


def _piped_stdin() -> str | None:
    """What a pipe or a redirected file on stdin holds; None for a terminal, /dev/null or anything else that
    might never end (a program started from a service manager keeps an open socket there)."""
    if sys.stdin is None:
        return None
    try:
        fd = sys.stdin.fileno()
    except io.UnsupportedOperation:  # not a real file: a test runner's stream
        return None if sys.stdin.isatty() else _read_stdin()
    except ValueError:  # closed
        return None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # closed
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISREG(mode):
        return _read_stdin()
    return None


MAX_STDIN = 16 << 20  # far more than any context holds; `yes | localr1 ask hi` must not fill the memory


def _read_stdin() -> str:
    """All of stdin as text: at most ``MAX_STDIN`` bytes, and UTF-8, or a one-line error."""
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read(MAX_STDIN + 1) if stream is not None else sys.stdin.read(MAX_STDIN + 1)
    if len(data) > MAX_STDIN:
        raise UsageError(
            f"stdin holds more than {MAX_STDIN >> 20} MiB", hint="Pass a shorter text: it must fit the model's context."
        )
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"stdin is not UTF-8 text (byte {exc.start:,} is {data[exc.start]:#04x})",
            hint="Convert it first, e.g. iconv -f latin1 -t utf-8 file.txt | localr1 ask ...",
        ) from None


@contextlib.contextmanager
def cancel_on_sigint(cancel: threading.Event) -> Iterator[None]:
    """First Ctrl-C stops generation cleanly (what was printed stays); a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@command(help=command_help(HELP), no_args_is_help=False)
@handle_errors
@opt.simulated
def ask(
    question: str | None = typer.Argument(None, help='The question; "-" or a pipe reads it from stdin.'),
    model: str | None = typer.Option(
        None, "--model", "-m", help="A .gguf file or a catalog name (r1:7b, r1:14b:Q5_K_M, ...)."
    ),
    show_thinking: bool = typer.Option(False, "--show-thinking", "-t", help="Stream the thinking to stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with reasoning and answer."),
    stats: bool = typer.Option(False, "--stats", help="Then print tokens, speed and times on stderr."),
    system: str | None = typer.Option(None, "--system", help="Instructions, folded into the question."),
    math: bool = typer.Option(False, "--math", help="Ask for step-by-step reasoning and a \\boxed{} answer."),
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(DEFAULT_TOP_P, "--top-p", help="Nucleus sampling threshold."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for repeatable answers."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Stop after this many tokens."),
    json_schema: str | None = typer.Option(
        None,
        "--json-schema",
        help="Make the answer JSON that follows the JSON schema in this file ('json': any JSON object); the "
        "thinking stays free.",
        show_default=False,
    ),
    think_budget: opt.ThinkBudgetOpt = None,
    think_min: opt.ThinkMinOpt = None,
    ctx: opt.CtxOpt = None,
    threads: opt.ThreadsOpt = None,
    gpu_layers: opt.GpuLayersOpt = None,
    offline: opt.OfflineOpt = False,
    offload_mode: opt.OffloadOpt = "auto",
    gpu_experts: opt.GpuExpertsOpt = None,
    kv_type: opt.KvTypeOpt = None,
    workers: opt.WorkersOpt = None,
    speculate: opt.SpeculateOpt = None,
    draft: opt.DraftOpt = None,
    server: opt.ServerOpt = None,
    simulate=None,  # the simulation flags, as one Simulation (see options.simulated)
) -> None:
    from localr1.cli.engines import open_engine
    from localr1.cli.render import TerminalRenderer, dump_json, result_object, stats_line
    from localr1.events import collect
    from localr1.text.prompt import render, user_turn

    text = read_question(question)  # before anything slow: an empty question fails at once
    sampling = Sampling(
        temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_tokens, think_budget=think_budget,
        think_min=think_min, answer_grammar=answer_grammar(json_schema),
    ).validate()  # fmt: skip
    request = opt.load_request(
        model, ctx=ctx, gpu_layers=gpu_layers, threads=threads, offline=offline, offload=offload_mode,
        gpu_experts=gpu_experts, simulate=simulate, kv_type=kv_type, workers=workers,
        speculate=speculate, draft=draft,
    )  # fmt: skip
    cancel = threading.Event()
    with cancel_on_sigint(cancel):
        engine, name, path = open_engine(request, server, model, cancel)
        try:
            prompt = render(user_turn(text, system=system, math=math), engine.info.chat_format)
            events = engine.stream(prompt, sampling, cancel=cancel)
            if json_out:
                reasoning, answer, done = collect(events)
                if done is not None:
                    info = engine.info
                    meta = {
                        "name": name,
                        "path": str(path),
                        "quant": info.quant,
                        "n_ctx": info.n_ctx,
                        "n_gpu_layers": info.n_gpu_layers,
                    }
                    dump_json(result_object(meta, reasoning, answer, done))
            else:
                renderer = TerminalRenderer(show_thinking=show_thinking)
                done = renderer.render(events)
                if stats and done is not None:
                    renderer.note(stats_line(name, done))
        finally:
            engine.close()
    if done is not None and done.finish_reason == "cancelled":
        sys.stderr.write("Stopped.\n")
        raise typer.Exit(130)
