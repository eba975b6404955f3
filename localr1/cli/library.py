"""``localr1 pull``, ``list`` and ``rm``: models on disk."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from localr1.errors import ModelNotFoundError, UsageError

GiB = 1 << 30


def choose_quant_for_machine(model) -> str:
    """The planner's quant for this machine, or the catalog default when nothing fits."""
    from localr1 import candidates as cands
    from localr1.hardware import machine
    from localr1.planner import NoPlanError, choose

    try:
        return choose(cands.from_catalog({model.name: model}, include_local=False), machine()).candidate.quant
    except NoPlanError:
        return model.default_quant


def pull_target(target, offline: bool = False, *, announce: bool = True) -> Path:
    from localr1.download import pull

    if announce and not offline:
        from localr1.download import remaining_bytes

        left = remaining_bytes(target)
        what = f"{len(target.files)} files, " if len(target.files) > 1 else ""
        state = "already downloaded" if left == 0 else f"{left / GiB:.2f} GiB to download"
        sys.stderr.write(f"Pulling {target.label} from {target.repo_id} ({what}{target.size / GiB:.2f} GiB, {state})\n")
    return pull(target, offline=offline, show_progress=sys.stderr.isatty() or bool(os.environ.get("LOCALR1_PROGRESS")))


def _blob_of(path: Path) -> Path:
    return Path(os.path.realpath(path))


def remove_files(paths: list[Path]) -> int:
    """Delete model files; in the HF cache, the snapshot links and every blob no other link uses."""
    freed = 0
    for path in paths:
        blob = _blob_of(path)
        in_cache = path.is_symlink() and blob.parent.name == "blobs"
        if in_cache:
            repo_dir = blob.parent.parent
            path.unlink()
            still_used = any(
                p.is_symlink() and _blob_of(p) == blob for p in (repo_dir / "snapshots").rglob("*") if p != path
            )
            if not still_used and blob.exists():
                freed += blob.stat().st_size
                blob.unlink()
                Path(str(blob) + ".lock").unlink(missing_ok=True)
            for parent in path.parents:  # empty folders of the snapshot
                if parent == repo_dir or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        elif path.exists():
            freed += path.stat().st_size
            path.unlink()
    return freed


def register(app: typer.Typer) -> None:
    from localr1.cli.app import handle_errors

    @app.command(
        help="Download a model into the Hugging Face cache, verified by sha256 and resumable.\n\n"
        "Examples:\n\n  localr1 pull r1:14b            (the quant planned for this machine)\n\n"
        "  localr1 pull r1:14b:Q5_K_M\n\n  localr1 pull unsloth/DeepSeek-R1-Distill-Qwen-7B-GGUF:DeepSeek-R1-Distill-Qwen-7B-Q8_0.gguf"
    )
    @handle_errors
    def pull(
        model: str = typer.Argument(..., help="A catalog name (r1:14b, r1:14b:Q5_K_M) or owner/repo[:file.gguf]."),
        quant: str | None = typer.Option(None, "--quant", "-q", help="The quant, if not in the name."),
        offline: bool = typer.Option(False, "--offline", help="Use only the local cache; open no connection."),
        revision: str = typer.Option("main", "--revision", help="Branch, tag or commit of the repository."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        from localr1.download import offline_mode, resolve_target

        off = offline_mode(offline)
        if not off and sys.stderr.isatty():  # the Hub may take a while to answer (or to fail)
            from localr1.download import endpoint

            sys.stderr.write(f"Looking up {model} on {endpoint()}…\n")
        target = resolve_target(
            model, quant=quant, choose_quant=choose_quant_for_machine, offline=off, revision=revision
        )
        path = pull_target(target, offline=off)
        if json_out:
            out = {"model": target.label, "repo": target.repo_id, "path": str(path), "bytes": target.size}
            sys.stdout.write(json.dumps(out, indent=2) + "\n")
        else:
            sys.stdout.write(f"{path}\n")

    @app.command(
        name="list",
        help="List the models on this machine: catalog builds, Hub downloads and files in localr1's folder.\n\n"
        "Examples:\n\n  localr1 list\n\n  localr1 list --json",
    )
    @handle_errors
    def list_models(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        from localr1.gguf_info import split_siblings
        from localr1.resolve import local_models

        rows = []
        for m in sorted(local_models(), key=lambda m: m.name):
            size = sum(p.stat().st_size for p in split_siblings(m.path) if p.exists())
            quant = m.quant
            if quant is None:
                try:
                    from localr1.gguf_info import inspect_model

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
        sys.stdout.write(f"{'NAME':44} {'QUANT':10} {'SIZE':>9}  PATH\n")
        for r in rows:
            sys.stdout.write(f"{r['name'][:44]:44} {r['quant']:10} {r['bytes'] / GiB:7.2f} G  {r['path']}\n")

    @app.command(
        help="Delete a downloaded model (all its quants unless one is named) and free the space.\n\n"
        "Examples:\n\n  localr1 rm r1:14b:Q5_K_M\n\n  localr1 rm r1:14b --yes\n\n  localr1 rm ./my-model.gguf"
    )
    @handle_errors
    def rm(
        model: str = typer.Argument(..., help="A catalog name, a name from `localr1 list`, or a file."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        from localr1.gguf_info import split_siblings
        from localr1.resolve import local_models

        models = local_models()
        matches = [m for m in models if m.name == model or m.name.startswith(model + ":") or str(m.path) == model]
        if not matches and Path(model).exists():
            matches = [m for m in models if m.path.resolve() == Path(model).resolve()]
        if not matches:
            raise ModelNotFoundError(f"no downloaded model matches {model!r}", hint="See what is there: localr1 list")
        files = [p for m in matches for p in split_siblings(m.path) if p.exists() or p.is_symlink()]
        size = sum(p.stat().st_size for p in files if p.exists())
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("rm needs confirmation", hint="Pass --yes to delete without asking.")
            names = ", ".join(m.name for m in matches)
            if not typer.confirm(f"Delete {names} ({size / GiB:.2f} GiB)?", default=False, err=True):
                raise typer.Exit(1)
        freed = remove_files(files)
        if json_out:
            sys.stdout.write(json.dumps({"removed": [m.name for m in matches], "freed_bytes": freed}) + "\n")
        else:
            sys.stdout.write(f"Removed {', '.join(m.name for m in matches)}: {freed / GiB:.2f} GiB freed.\n")
