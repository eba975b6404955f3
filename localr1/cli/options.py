"""Command-line options that several commands share, declared once (``Annotated`` aliases), and the
``LoadRequest`` they build.

A command that opens a model takes ``ctx: CtxOpt = None`` and the rest, then calls ``load_request(...)``:
the values are checked in one place (``LoadRequest.validated``) and travel as one value to the loader.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from localr1.errors import UsageError
from localr1.fit.request import LoadRequest

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

_SIMULATE = "Simulate"

CtxOpt = Annotated[
    int | None, typer.Option("--ctx", help="Context size in tokens (default: 16384, less if memory is short).")
]
GpuLayersOpt = Annotated[
    int | None,
    typer.Option("--gpu-layers", help="Layers to offload to the GPU (-1: all; default: as planned for this machine)."),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")]
KvTypeOpt = Annotated[
    str | None,
    typer.Option("--kv-type", help="KV cache type: f16, q8_0 or q4_0 (default: f16, q8_0 where f16 does not fit)."),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never download: use only models on disk.")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="MoE placement: auto, gpu, ram, disk or off.")]
GpuExpertsOpt = Annotated[int | None, typer.Option("--gpu-experts", help="MoE: layers of experts on the GPU.")]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="LOCALR1_SERVER",
        help="Use a running `localr1 serve` at this address (e.g. 127.0.0.1:11435) instead of loading a model.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="The model, as the argument (llama.cpp's -m).", show_default=False),
]


def one_model(argument: str | None, option: str | None) -> str | None:
    """The model named by the argument or by -m/--model (llama.cpp users type -m by habit), not both."""
    if argument is not None and option is not None and argument != option:
        raise UsageError(f"two models named: {argument!r} and -m {option!r}", hint="Name the model once.")
    return option if option is not None else argument


SpeculateOpt = Annotated[
    str | None,
    typer.Option(
        "--speculate",
        help="Speculative decoding: off, ngram (drafts from the context), draft (a small model drafts) or auto "
        "(n-grams, plus the catalog's draft model when it is on disk and fits; the default). The tokens keep "
        "exactly the distribution plain decoding gives.",
        show_default=False,
    ),
]
DraftOpt = Annotated[
    str | None,
    typer.Option(
        "--draft",
        help="The draft model for --speculate draft/auto: a catalog name or a .gguf with the same tokenizer "
        "(default: the catalog's, r1:1.5b for the Qwen distills).",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    str | None,
    typer.Option(
        "--workers",
        envvar="LOCALR1_WORKERS",
        help="`localr1 worker`s whose devices take layers too: host:port,host:port (llama.cpp RPC).",
        show_default=False,
    ),
]
ThinkBudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--think-budget",
        help="End the thinking after this many tokens (the model is told to answer now), as in s1's budget forcing.",
        show_default=False,
    ),
]
ThinkMinOpt = Annotated[
    int | None,
    typer.Option(
        "--think-min",
        help='Think at least this many tokens: an earlier end of thinking becomes "Wait" (up to 3 times).',
        show_default=False,
    ),
]
JsonResultOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

# The simulation flags, shared by every command that plans.
VramOpt = Annotated[
    str | None, typer.Option("--vram", help="Simulate GPU memory per GPU (e.g. 12GiB).", rich_help_panel=_SIMULATE)
]
RamOpt = Annotated[str | None, typer.Option("--ram", help="Simulate RAM (e.g. 32GiB).", rich_help_panel=_SIMULATE)]
GpusOpt = Annotated[
    int | None, typer.Option("--gpus", help="Simulate this many GPUs (0: none).", rich_help_panel=_SIMULATE)
]
GpuKindOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu", help='Simulate nvidia, amd, apple, none, or a model ("RTX 4090", "M2 Max").', rich_help_panel=_SIMULATE
    ),
]
DiskOpt = Annotated[
    str | None, typer.Option("--disk", help="Simulate free disk (e.g. 2TiB).", rich_help_panel=_SIMULATE)
]


def simulation(vram: str | None, ram: str | None, gpus: int | None, gpu: str | None, disk: str | None):
    """The simulated machine the flags describe (None where nothing is simulated)."""
    from localr1.machine.hardware import GPU_KINDS, Simulation, gpu_hint, known_gpu, parse_size

    if gpu is not None and gpu.lower() not in GPU_KINDS and known_gpu(gpu) is None:
        raise UsageError(f"--gpu {gpu!r} is neither a vendor nor a GPU localr1 knows", hint=gpu_hint())
    if gpus is not None and gpus < 0:
        raise UsageError("--gpus cannot be negative")
    return Simulation(
        vram=parse_size(vram) if vram else None,
        ram=parse_size(ram) if ram else None,
        gpus=gpus,
        gpu=gpu.lower() if gpu else None,
        disk=parse_size(disk) if disk else None,
    )


def simulated(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the five simulation flags (--vram --ram --gpus --gpu --disk, last in its --help); the
    function receives them as one ``simulate`` argument (a ``Simulation``) instead."""
    signature = inspect.signature(func, eval_str=True)
    flags = {"vram": VramOpt, "ram": RamOpt, "gpus": GpusOpt, "gpu": GpuKindOpt, "disk": DiskOpt}
    params = [p for p in signature.parameters.values() if p.name != "simulate"]
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a) for n, a in flags.items()
    ]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = [kwargs.pop(name, None) for name in flags]
        return func(*args, simulate=simulation(*values), **kwargs)

    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}  # resolved: Typer reads them as they are
    return command


def load_request(
    spec: str | None,
    *,
    ctx: int | None = None,
    gpu_layers: int | None = None,
    threads: int | None = None,
    offline: bool = False,
    offload: str = "auto",
    gpu_experts: int | None = None,
    simulate=None,
    kv_type: str | None = None,
    parallel: int = 1,
    workers: str | None = None,
    speculate: str | None = None,
    draft: str | None = None,
) -> LoadRequest:
    """The checked request the options describe."""
    from localr1.cli.state import state

    return LoadRequest(
        spec=spec,
        ctx=ctx,
        gpu_layers=gpu_layers,
        threads=threads,
        offline=offline,
        offload=offload,
        gpu_experts=gpu_experts,
        simulation=simulate,
        debug=state.debug,
        kv_type=kv_type,
        parallel=parallel,
        workers=tuple(w.strip() for w in (workers or "").split(",") if w.strip()),
        speculate=speculate,
        draft=draft,
    ).validated()


def remote_engine(server: str, model: str | None):
    """The engine of a running ``localr1 serve`` (``--server``); ``model``, if given, must be the one it serves."""
    from localr1.engine.remote import RemoteEngine

    engine = RemoteEngine(server)
    if model and model != engine.info.name:
        raise UsageError(
            f"the server at {server} serves {engine.info.name!r}, not {model!r}",
            hint="Drop --model, or start `localr1 serve` with that model.",
        )
    return engine
