"""The ``localr1`` command line.

Commands live in their own modules and are registered here; heavy libraries (llama_cpp, textual,
huggingface_hub) are imported only inside the commands that need them, so ``--help`` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from localr1 import __version__
from localr1.cli.helptext import command_help
from localr1.cli.state import state

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

app = typer.Typer(
    name="localr1",
    help=command_help(
        """Run DeepSeek-R1 reasoning models on your own machine, with the thinking kept apart.

        Examples:
        $ localr1 ask "prove that sqrt(2) is irrational" --show-thinking
        $ echo "what is 17 * 23?" | localr1 ask --math --model ./DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf
        $ localr1 ask "..." --json | jq .content
        $ localr1 chat
        """
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion [bash|zsh|fish|powershell]
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"localr1 {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and llama.cpp's log."),
) -> None:
    if debug:
        state.debug = True
        os.environ["LOCALR1_DEBUG"] = "1"


def _register() -> None:
    """Every command, in the order --help lists them (everyday first)."""
    from localr1.cli import ask, bench, chat, doctor, evaluate, library, machine, serve, worker
    from localr1.cli.state import COMMANDS

    for module in (ask, chat, serve, library, machine, bench, evaluate, worker, doctor):
        for func, args, kwargs in COMMANDS[module.__name__]:
            app.command(*args, **kwargs)(func)
    app.add_typer(doctor.backend_app, name="backend")


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point. ``--debug`` is accepted anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):  # the OS hands undecodable bytes over as surrogates: refuse them here
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            sys.stderr.write(f"Error: argument {i + 1} is not valid UTF-8: {arg.encode('utf-8', 'replace')!r}\n")
            sys.stderr.write("Hint: check the terminal's encoding (locale), or pass the text on stdin.\n")
            sys.exit(2)
    if "--debug" not in args:  # ggml's abort path attaches gdb and prints ~100 frames: not at a user
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    if "--debug" in args:
        state.debug = True
        os.environ["LOCALR1_DEBUG"] = "1"  # for the libraries localr1 drives (their own logs)
        args = [a for a in args if a != "--debug"]
        args.insert(0, "--debug")
    try:
        app(args=args, prog_name="localr1")
    except KeyboardInterrupt:  # Ctrl-C outside a command (during start-up)
        sys.stderr.write("\nInterrupted.\n")
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, trace with --debug
        if state.debug:
            raise
        sys.stderr.write(f"Error: internal error: {type(exc).__name__}: {exc}\n")
        sys.stderr.write("Hint: run again with --debug for the traceback, and report it.\n")
        sys.exit(1)
