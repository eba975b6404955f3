"""``localr1 pull``, ``list``, ``rm``, ``convert`` and ``quantize``: models on disk."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from localr1.cli.helptext import command_help
from localr1.cli.options import JsonOpt, JsonResultOpt
from localr1.cli.state import command, handle_errors
from localr1.errors import ModelNotFoundError, UsageError
from localr1.units import GiB

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

OUTPUT_OPTION = typer.Option(None, "-o", "--output", help="The output file.")
IMATRIX_OPTION = typer.Option(
    None, "--imatrix", help="An importance matrix from llama-imatrix (.gguf or .dat): better low-bit quants."
)


@contextlib.contextmanager
def progress_bar(desc: str, **tqdm_args) -> Iterator[Callable[..., None]]:
    """A callback ``(done, total[, label])`` drawing a bar on a terminal (nothing when stderr is not one)."""
    bar = None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=0, desc=desc, **tqdm_args)

    def update(done: int, total: int, label: str | None = None) -> None:
        if bar is not None:
            bar.total, bar.n = total, done
            if label is not None:
                bar.set_postfix_str(label, refresh=False)
            bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def choose_quant_for_machine(model) -> str:
    """The planner's quant for this machine, or the catalog default when nothing fits."""
    from localr1.fit import candidates as cands
    from localr1.fit.planner import NoPlanError, choose
    from localr1.machine.hardware import machine

    try:
        return choose(cands.from_catalog({model.name: model}, include_local=False), machine()).candidate.quant
    except NoPlanError:
        return model.default_quant


def pull_target(target, offline: bool = False, *, announce: bool = True, cancel=None) -> Path:
    """Download with a progress bar on a terminal. Ctrl-C (or ``cancel``, the event ask's Ctrl-C handler
    sets) stops it between chunks, keeping what was downloaded for the next run."""
    from localr1.models.download import pull

    if announce and not offline:
        from localr1.models.download import remaining_bytes

        left = remaining_bytes(target)
        what = f"{len(target.files)} files, " if len(target.files) > 1 else ""
        state = "already downloaded" if left == 0 else f"{left / GiB:.2f} GiB to download"
        sys.stderr.write(f"Pulling {target.label} from {target.repo_id} ({what}{target.size / GiB:.2f} GiB, {state})\n")
        for note in target.notes:
            sys.stderr.write(f"Note: {note}\n")

    def check_cancel(_name: str, _done: int, _total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise KeyboardInterrupt

    try:
        return pull(
            target,
            offline=offline,
            show_progress=sys.stderr.isatty() or bool(os.environ.get("LOCALR1_PROGRESS")),
            progress=check_cancel,
        )
    except KeyboardInterrupt:
        if not offline:
            sys.stderr.write("\nStopped. What was downloaded is kept: the same command resumes from there.\n")
            raise typer.Exit(130) from None
        raise


@command(
    help=command_help(
        """Download a model into the Hugging Face cache, verified by sha256 and resumable.

        Examples:
        $ localr1 pull r1:14b          # the quant planned for this machine
        $ localr1 pull r1:14b:Q5_K_M
        $ localr1 pull unsloth/DeepSeek-R1-Distill-Qwen-7B-GGUF:DeepSeek-R1-Distill-Qwen-7B-Q8_0.gguf
        """
    )
)
@handle_errors
def pull(
    model: str = typer.Argument(..., help="A catalog name (r1:14b, r1:14b:Q5_K_M) or owner/repo[:file.gguf]."),
    quant: str | None = typer.Option(None, "--quant", "-q", help="The quant, if not in the name."),
    offline: bool = typer.Option(False, "--offline", help="Use only the local cache; open no connection."),
    revision: str = typer.Option("main", "--revision", help="Branch, tag or commit of the repository."),
    json_out: JsonResultOpt = False,
) -> None:
    from localr1.models.download import offline_mode, resolve_target

    off = offline_mode(offline)
    if not off and sys.stderr.isatty():  # the Hub may take a while to answer (or to fail)
        from localr1.models.download import endpoint

        sys.stderr.write(f"Looking up {model} on {endpoint()}…\n")
    target = resolve_target(model, quant=quant, choose_quant=choose_quant_for_machine, offline=off, revision=revision)
    path = pull_target(target, offline=off)
    if json_out:
        out = {"model": target.label, "repo": target.repo_id, "path": str(path), "bytes": target.size}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(f"{path}\n")


@command(
    name="list",
    help=command_help(
        """List the models on this machine: catalog builds, Hub downloads and files in localr1's folder.

        Examples:
        $ localr1 list
        $ localr1 list --json
        """
    ),
)
@handle_errors
def list_models(json_out: JsonOpt = False) -> None:
    from localr1.models.gguf_info import split_siblings
    from localr1.models.resolve import local_models

    rows = []
    for m in sorted(local_models(), key=lambda m: m.name):
        size = sum(p.stat().st_size for p in split_siblings(m.path) if p.exists())
        quant = m.quant
        if quant is None:
            try:
                from localr1.models.gguf_info import inspect_model

                quant = inspect_model(m.path).quant_name
            except Exception:  # a broken file is listed, not fatal: `ask` will say what is wrong
                quant = "?"
        rows.append({"name": m.name, "quant": quant, "bytes": size, "path": str(m.path)})
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        sys.stdout.write("No models yet. Download one with: localr1 pull r1:7b\n")
        return
    sys.stdout.write(f"{'NAME':44} {'QUANT':10} {'SIZE':>10}  PATH\n")
    for r in rows:
        sys.stdout.write(f"{r['name'][:44]:44} {r['quant']:10} {r['bytes'] / GiB:6.2f} GiB  {r['path']}\n")


@command(
    help=command_help(
        """Delete a downloaded model (all its quants unless one is named) and free the space.

        Examples:
        $ localr1 rm r1:14b:Q5_K_M
        $ localr1 rm r1:14b --yes
        $ localr1 rm ./my-model.gguf
        """
    )
)
@handle_errors
def rm(
    model: str = typer.Argument(..., help="A catalog name, a name from `localr1 list`, or a file."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_out: JsonOpt = False,
) -> None:
    from localr1.models.gguf_info import split_siblings
    from localr1.models.resolve import local_models

    models = local_models()
    # Exactly what was named: one build (r1:14b:Q5_K_M), every quant of one catalog model (r1:14b), or a
    # file. Never a prefix: `rm tiny` must not delete tiny:1b and tiny:2b.
    matches = [
        m
        for m in models
        if m.name == model or (m.catalog is not None and m.catalog.name == model) or str(m.path) == model
    ]
    if not matches and Path(model).exists():
        matches = [m for m in models if m.path.resolve() == Path(model).resolve()]
    if not matches:
        near = [m.name for m in models if m.name.startswith(model)]
        if near:
            shown = ", ".join(near[:6]) + (f" and {len(near) - 6} more" if len(near) > 6 else "")
            raise UsageError(
                f"{model!r} names no one model: it begins {shown}", hint="Name the model to delete in full."
            )
        raise ModelNotFoundError(f"no downloaded model matches {model!r}", hint="See what is there: localr1 list")
    files = [p for m in matches for p in split_siblings(m.path) if p.exists() or p.is_symlink()]
    size = sum(p.stat().st_size for p in files if p.exists())
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("rm needs confirmation", hint="Pass --yes to delete without asking.")
        names = ", ".join(m.name for m in matches)
        if not typer.confirm(f"Delete {names} ({size / GiB:.2f} GiB)?", default=False, err=True):
            raise typer.Exit(1)
    from localr1.models.hf_cache import remove_files

    freed = remove_files(files)
    if json_out:
        sys.stdout.write(json.dumps({"removed": [m.name for m in matches], "freed_bytes": freed}) + "\n")
    else:
        sys.stdout.write(f"Removed {', '.join(m.name for m in matches)}: {freed / GiB:.2f} GiB freed.\n")


@command(
    help=command_help(
        """Quantize a model to any llama.cpp type (through llama.cpp's own quantizer).

        The output goes into localr1's models folder (so `localr1 list` shows it) unless -o says otherwise.

        Examples:
        $ localr1 quantize r1:7b:Q8_0 --to Q4_K_M
        $ localr1 quantize ./model-f16.gguf --to Q5_K_M -o ./model-Q5_K_M.gguf
        $ localr1 quantize ./model-f16.gguf --to IQ2_XS --imatrix ./imatrix.gguf
        $ localr1 quantize x --to list      # the types, with their bits per weight
        """
    )
)
@handle_errors
def quantize(
    model: str = typer.Argument(..., help="A .gguf file, or a downloaded catalog model (r1:7b:Q8_0)."),
    to: str = typer.Option(..., "--to", help="The type (Q4_K_M, Q5_K_M, Q8_0, ...), or 'list'."),
    output: Path | None = OUTPUT_OPTION,
    imatrix: Path | None = IMATRIX_OPTION,
    threads: int | None = typer.Option(None, "--threads", help="Threads (default: all cores)."),
    json_out: JsonResultOpt = False,
) -> None:
    from localr1 import limits
    from localr1.models import quantize as q

    limits.threads(threads)
    from localr1.config import load_config
    from localr1.models.download import free_disk
    from localr1.models.resolve import resolve_model
    from localr1.paths import models_dir

    if to.lower() == "list":
        rows = [(name, q.bits_per_weight(name)) for name in q.QUANT_TYPES]
        if json_out:
            sys.stdout.write(json.dumps([{"type": n, "bits_per_weight": b} for n, b in rows], indent=2) + "\n")
            return
        for name, bpw in sorted(rows, key=lambda r: r[1]):
            note = "  (needs --imatrix)" if name in q.NEEDS_IMATRIX else ""
            sys.stdout.write(f"{name:10} {bpw:5.2f} bits per weight{note}\n")
        return
    to = q.parse_type(to, imatrix=imatrix is not None)
    source = resolve_model(model, load_config()).path
    dest = output or q.default_output(source, to, models_dir())
    with progress_bar(f"quantize to {to}", unit="tensor") as progress:
        result = q.quantize(source, to, dest, threads=threads, imatrix=imatrix, progress=progress, free_bytes=free_disk)
    if json_out:
        out = {"source": str(result.source), "output": str(result.output), "to": to}
        out |= {"imatrix": str(imatrix) if imatrix else None}
        out |= {"source_bytes": result.source_bytes, "output_bytes": result.output_bytes}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    gib_in, gib_out = result.source_bytes / GiB, result.output_bytes / GiB
    sys.stdout.write(
        f"{result.source.name} ({gib_in:.2f} GiB) -> {result.output} ({gib_out:.2f} GiB, "
        f"{100 * result.output_bytes / max(result.source_bytes, 1):.0f}%)\n"
    )


@command(
    help=command_help(
        """Convert a Hugging Face checkpoint (safetensors) into a GGUF that llama.cpp and localr1 run.

        Qwen 2.5 / Llama 3 / Qwen 3 checkpoints (the R1 distills and their fine-tunes). The file is the
        one llama.cpp's convert_hf_to_gguf.py writes, without needing PyTorch. The output goes into
        localr1's models folder (so `localr1 list` shows it) unless -o says otherwise.

        Examples:
        $ localr1 convert ./my-r1-finetune
        $ localr1 convert deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --outtype q8_0
        $ localr1 convert ./ckpt --outtype f16 -o ./model-f16.gguf
        $ localr1 quantize ./model-f16.gguf --to Q4_K_M
        """
    )
)
@handle_errors
def convert(
    source: str = typer.Argument(..., help="A checkpoint folder, or a Hub repository (owner/name) to download."),
    outtype: str = typer.Option(
        "auto", "--outtype", help="f16, bf16, q8_0, f32, or auto (the checkpoint's own 16-bit type)."
    ),
    output: Path | None = OUTPUT_OPTION,
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read pytorch_model.bin weights (unpickling can run code; needs torch)."
    ),
    name: str | None = typer.Option(None, "--name", help="The model's name inside the file (general.name)."),
    offline: bool = typer.Option(False, "--offline", help="Use only the local cache; open no connection."),
    revision: str = typer.Option("main", "--revision", help="Branch, tag or commit, for a Hub repository."),
    json_out: JsonResultOpt = False,
) -> None:
    from localr1.models import convert as cv
    from localr1.models.download import free_disk, offline_mode
    from localr1.paths import models_dir

    folder, folder_name = Path(source).expanduser(), None
    if not folder.exists() and "/" in source and not source.startswith((".", "/", "~")):
        from localr1.models.download import checkpoint_folder

        show = sys.stderr.isatty() or bool(os.environ.get("LOCALR1_PROGRESS"))
        folder = checkpoint_folder(source, revision=revision, offline=offline_mode(offline), show_progress=show)
        folder_name = source.split("/")[1]  # not the snapshot folder's own name, a commit hash
    elif not folder.exists():
        raise UsageError(f"{source} does not exist", hint="Pass a checkpoint folder or owner/name on the Hub.")
    with progress_bar("convert", unit="B", unit_scale=True, unit_divisor=1024) as progress:
        result = cv.convert(
            folder, output, outtype=outtype.lower(), output_dir=models_dir(), allow_pickle=allow_pickle,
            model_name=name, folder_name=folder_name, progress=progress, free_bytes=free_disk,
        )  # fmt: skip
    if json_out:
        out = {"source": str(result.source), "output": str(result.output), "architecture": result.arch}
        out |= {"outtype": result.outtype, "tensors": result.n_tensors, "parameters": result.n_params}
        out |= {"output_bytes": result.output_bytes, "pre_tokenizer": result.pre_tokenizer, "notes": result.notes}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    for note in result.notes:
        sys.stderr.write(f"note: {note}\n")
    from gguf.utility import model_weight_count_rounded_notation

    params = model_weight_count_rounded_notation(result.n_params)
    sys.stdout.write(
        f"{result.output} ({result.arch}, {result.outtype.upper()}, {params} parameters, "
        f"{result.output_bytes / GiB:.2f} GiB)\n"
    )
    if sys.stderr.isatty() and result.outtype != "q8_0":
        sys.stderr.write(f"Next, to make it smaller: localr1 quantize {result.output} --to Q4_K_M\n")
