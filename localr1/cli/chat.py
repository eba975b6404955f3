"""``localr1 chat``: the Textual TUI, wired to the real planner, downloader and engine."""

from __future__ import annotations

import sys

import typer

from localr1.cli import options as opt
from localr1.cli.helptext import command_help
from localr1.cli.state import command, handle_errors
from localr1.errors import UsageError
from localr1.text.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Sampling

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

HELP = """Chat with an R1 model in a terminal app: the thinking streams live into a collapsible block.

Keys: Enter sends, Ctrl+J new line, Esc stops, Ctrl+T expands/collapses thinking, Ctrl+N new chat,
Ctrl+O saved chats, Ctrl+L choose a model, F1 all keys.

Examples:
$ localr1 chat
$ localr1 chat r1:14b --ctx 32768
$ localr1 chat ./DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf --hide-thinking
"""


def is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def real_loader(request, notice):
    """Plan, download if needed (progress into the app), and load, retrying smaller on out-of-memory: the
    chat's ``loader(spec, progress)``, with the settings of ``request`` for whichever model is chosen."""

    def load(spec, progress):
        from localr1.config import load_config
        from localr1.loader import open_model
        from localr1.models.download import pull

        return open_model(
            request.for_spec(spec),
            load_config(),
            fetch=lambda target, off: pull(target, offline=off, show_progress=False, progress=progress),
            say=notice,
        ).engine

    return load


def picker_entries(sim):
    def entries():
        from localr1.cli.machine import fit_mark
        from localr1.fit.candidates import catalog_fits
        from localr1.machine.hardware import machine
        from localr1.models.catalog import load_catalog
        from localr1.models.resolve import local_models
        from localr1.tui.screens import PickerEntry
        from localr1.units import GiB

        catalog = load_catalog()
        out = []
        for fit in catalog_fits(catalog, machine(sim)):
            name, model, plan = fit.model.name, fit.model, fit.plan
            if plan is None:
                out.append(PickerEntry(name, f"{name:14} {model.title} · too big for this machine", False, False))
                continue
            c = plan.candidate
            label = (
                f"{c.label:24} {model.title} · {fit_mark(plan)} · ~{plan.decode_tps:.0f} tok/s · "
                f"{c.weights.total / GiB:.1f} GiB"
            )
            out.append(PickerEntry(c.label, label, c.path is not None, True))
        for m in local_models(catalog):
            if m.catalog is None:
                out.append(PickerEntry(str(m.path), f"{m.name} (local file)", True, True))
        return out

    return entries


def server_entries(remote):
    """The picker with a server: just the model it serves."""

    def entries():
        from localr1.tui.screens import PickerEntry

        name = remote.info.name
        return [PickerEntry(name, f"{name} (served at {remote.url})", True, True)]

    return entries


@command(help=command_help(HELP))
@handle_errors
@opt.simulated
def chat(
    model: str | None = typer.Argument(None, help="A catalog name or .gguf file (default: the best that fits)."),
    model_option: opt.ModelOpt = None,
    ctx: opt.CtxOpt = None,
    gpu_layers: opt.GpuLayersOpt = None,
    threads: opt.ThreadsOpt = None,
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(DEFAULT_TOP_P, "--top-p", help="Nucleus sampling threshold."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Longest reply in tokens."),
    think_budget: opt.ThinkBudgetOpt = None,
    think_min: opt.ThinkMinOpt = None,
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Hide the thinking blocks entirely."),
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
    model = opt.one_model(model, model_option)
    from localr1.config import load_config
    from localr1.models.resolve import check_spec
    from localr1.text.conversations import ConversationStore

    if not is_terminal():
        raise UsageError("chat needs a terminal", hint='For pipes and scripts: localr1 ask "..." (or --json).')
    request = opt.load_request(
        model, ctx=ctx, gpu_layers=gpu_layers, threads=threads, offline=offline, offload=offload_mode,
        gpu_experts=gpu_experts, simulate=simulate, kv_type=kv_type, workers=workers,
        speculate=speculate, draft=draft,
    )  # fmt: skip
    sampling = Sampling(
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, think_budget=think_budget, think_min=think_min
    ).validate()
    config = load_config()
    if server:
        remote = opt.remote_engine(server, model)  # an unreachable server fails here, before the app starts
        loader, entries, model = (lambda spec, progress: remote), server_entries(remote), remote.info.name
    else:
        if model or config.default_model:
            check_spec(model or config.default_model)  # a typo fails here, not inside the full-screen app
        if request.workers or config.workers:
            from localr1.loader import join_workers

            join_workers(request, config)  # a port that is no worker fails here too (exit 3), before the app
        loader = real_loader(request, lambda text: tui.call_from_thread(tui.notify, text, severity="warning"))
        entries = picker_entries(request.simulation)

    from localr1.tui.app import make_app

    tui = make_app(
        loader=loader,
        store=ConversationStore(),
        picker_entries=entries,
        spec=model,
        sampling=sampling,
        hide_thinking=hide_thinking or config.hide_thinking,
        quit_on_signals=True,
    )
    if request.workers or config.workers:  # a lost worker ends the process: keep the reply, give back the terminal
        from localr1.engine.rpc import at_worker_loss

        at_worker_loss(lambda: tui.save_for_exit("worker lost"))
        at_worker_loss(terminal_restorer())
    tui.run()


def terminal_restorer():
    """A function that puts the terminal back as it is now (line mode, echo, the normal screen, the cursor,
    no mouse reporting), for when the full-screen app cannot shut down itself."""
    import os
    import termios

    from localr1.engine.rpc import report_losses_to

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def restore() -> None:
        # The app's writer thread goes on writing frames to standard error while this runs: point that at
        # /dev/null first (a frame written after the escape below was drawn on the normal screen), and say
        # the error through a copy of the terminal's descriptor.
        err = sys.__stderr__.fileno()
        tty = os.dup(err)
        os.dup2(os.open(os.devnull, os.O_WRONLY), err)
        report_losses_to(tty)
        # leave the alternate screen, show the cursor, stop mouse and bracketed-paste reporting
        os.write(tty, b"\x1b[?1000l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?25h\x1b[?1049l")
        termios.tcsetattr(fd, termios.TCSANOW, saved)

    return restore
