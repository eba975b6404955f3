"""``localr1 doctor`` (what this install and machine have, and how to fix what is wrong) and
``localr1 backend install`` (rebuild llama.cpp for the GPU)."""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from typing import Annotated

import typer

from localr1.cli.helptext import command_help
from localr1.cli.options import JsonOpt
from localr1.cli.state import command, handle_errors
from localr1.units import gib

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.


def _color(code: str) -> tuple[str, str]:
    on = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return (f"\x1b[{code}m", "\x1b[0m") if on else ("", "")


def doctor_lines(report) -> list[str]:
    lines = [
        f"{'Python':12} {report.python['version']} ({report.python['executable']})",
        f"{'localr1':12} {report.localr1['version']} in a {report.localr1['environment']} environment "
        f"({report.localr1['prefix']})",
    ]
    ll = report.llama_cpp
    if ll.get("llama_cpp_python"):
        devices = ", ".join(d["name"] for d in ll.get("devices", [])) or "none found"
        backends = ", ".join(b for b in ll.get("backends", [])) or "?"
        rpc = "; RPC: yes" if ll.get("rpc") else "; RPC: no"
        lines.append(f"{'llama.cpp':12} llama-cpp-python {ll['llama_cpp_python']}: {backends} ({devices}){rpc}")
    else:
        lines.append(f"{'llama.cpp':12} not installed")
    if not report.gpus:
        lines.append(f"{'GPU':12} none found")
    for i, g in enumerate(report.gpus):
        use = "usable" if g["usable"] else "NOT usable by this build"
        lines.append(f"{'GPU ' + str(i):12} {g['name']}, {gib(g['memory_total'])}: {use}")
    tc = report.toolchain
    found = ", ".join(f"{k} ({v})" for k, v in tc["found"].items()) or "nothing"
    lines.append(f"{'Toolchain':12} {found}")
    lines.append(f"{'Backend':12} {tc['recommended_backend']} suits this machine")
    disk = report.disk
    lines.append(f"{'Disk':12} {gib(disk['free']) if disk['free'] is not None else '?'} free at {disk['path']}")
    models = report.models
    lines.append(f"{'Models':12} {len(models['downloaded'])} on disk ({' and '.join(models['folders'])})")
    lines.append(f"{'Config':12} {report.config['path']}{'' if report.config['exists'] else ' (none: defaults)'}")
    if not report.problems:
        green, reset = _color("32")
        lines += ["", f"{green}No problems found.{reset}"]
        return lines
    lines.append("")
    for p in report.problems:
        color, reset = _color("31" if p.severity == "error" else "33")
        lines.append(f"{color}{p.severity.capitalize()}:{reset} {p.message}")
        lines.append(f"  Fix: {p.fix}")
    return lines


@command(
    help=command_help(
        """Check this install and this machine, and say how to fix what is wrong.

        Shows the Python, localr1 and llama.cpp versions, the backends this build has, the GPUs and whether
        they are used, the build toolchain, disk and models; for each problem, the command that fixes it.
        Exits 1 when something stops localr1 from working.

        Examples:
        $ localr1 doctor
        $ localr1 doctor --json | jq .problems
        """
    )
)
@handle_errors
def doctor(json_out: JsonOpt = False) -> None:
    from localr1.machine.doctor import diagnose

    report = diagnose()
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(doctor_lines(report)) + "\n")
    if not report.ok:
        raise typer.Exit(1)


backend_app = typer.Typer(
    help=command_help(
        """Rebuild llama.cpp (llama-cpp-python) for a GPU backend, inside localr1's own environment.

        Examples:
        $ localr1 backend install cuda
        $ localr1 backend install vulkan --rpc
        """
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)


class BackendName(StrEnum):
    cuda = "cuda"
    vulkan = "vulkan"
    metal = "metal"
    cpu = "cpu"


BackendArg = Annotated[
    BackendName,
    typer.Argument(
        help="cuda (NVIDIA), vulkan (AMD, Intel, NVIDIA), metal (Apple Silicon) or cpu.",
        show_default=False,
    ),
]


class _BuildProgress:
    """CMake's "[n/N]" lines as a progress bar on a terminal, as a line every 10% elsewhere."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_tenth = -1
        self.tty = sys.stderr.isatty()
        self.stage = "downloading the source"

    def __call__(self, line: str) -> None:
        from localr1.machine.builds import build_progress

        text = line.strip()
        if "Building wheel" in text or "Running command Building wheel" in text:
            self.stage = "configuring"
        done = build_progress(text)
        elapsed = time.monotonic() - self.started
        if done is None:
            if self.tty:
                sys.stderr.write(f"\r\x1b[2K{self.stage} ({elapsed:.0f} s)")
            return
        self.stage = "compiling"
        n, total = done
        fraction = n / total
        if self.tty:
            width = 30
            bar = "█" * int(width * fraction) + "░" * (width - int(width * fraction))
            eta = f", ~{elapsed / fraction - elapsed:.0f} s left" if fraction > 0.05 else ""
            sys.stderr.write(f"\r\x1b[2Kcompiling llama.cpp {bar} {n}/{total} ({elapsed:.0f} s{eta})")
        elif int(fraction * 10) > self.last_tenth:
            self.last_tenth = int(fraction * 10)
            sys.stderr.write(f"compiling llama.cpp: {int(fraction * 100)}% ({elapsed:.0f} s)\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K")


def _cuda_plan(archs: str, version: int):
    """The CUDA build's plan for this machine: its driver, its toolkit parts, NVIDIA's wheels for the rest."""
    import shutil
    from pathlib import Path

    from localr1.errors import UsageError
    from localr1.machine.cuda_toolkit import WHEEL_ROOTS, driver_info, driver_library, find_parts, plan_cuda
    from localr1.machine.cuda_toolkit import toolkit_roots as roots
    from localr1.paths import data_dir

    if version and version not in WHEEL_ROOTS:
        raise UsageError(f"--cuda-version must be one of {', '.join(map(str, sorted(WHEEL_ROOTS)))}")
    wanted = [a.strip() for a in archs.split(",") if a.strip()]
    if any(not a.replace(".", "").isdigit() for a in wanted):
        raise UsageError(f"--cuda-arch takes compute capabilities such as 9.0,8.6, not {archs!r}")
    driver = driver_info()
    base = data_dir() / "cuda-toolkit"
    major = version or (driver.cuda[0] if driver.cuda else None)
    wheel_roots = [base / f"cu{m}" / r for m in WHEEL_ROOTS for r in sorted(set(WHEEL_ROOTS[m].values()))]
    found = find_parts(
        [*roots(), *(r for r in wheel_roots if r.is_dir())], Path(shutil.which("nvcc") or "/nonexistent")
    )
    probe_major = major or (found["nvcc"].major if "nvcc" in found else None) or 13
    return plan_cuda(driver, found, base / f"cu{probe_major}", archs=wanted, major=major, driver_lib=driver_library())


@backend_app.command(
    "install",
    help=command_help(
        """Rebuild llama-cpp-python with a GPU backend (or back to the CPU only), in the environment localr1
        runs in (pipx or a venv), with a progress display; the build log is kept. Refuses, naming the missing
        piece and how to get it, when the toolchain for that backend is not installed. Takes 5-20 minutes
        (CUDA: longer). CUDA needs only the NVIDIA driver: the compiler, runtime, cuBLAS and CCCL it lacks (or
        has for another CUDA version than the driver's) come from NVIDIA's wheels on PyPI, and the build loads
        its CUDA backend at run time, so it still starts, on the CPU, where the driver or the GPU is missing.

        Examples:
        $ localr1 backend install cuda
        $ localr1 backend install vulkan --rpc      # also the RPC backend, for workers on other machines
        $ localr1 backend install cpu
        $ localr1 backend install cuda --dry-run    # the plan only: NVIDIA's wheels, pip and CMake
        $ localr1 backend install cuda --cuda-arch 9.0,8.6   # no GPU here: build for these
        """
    ),
)
@handle_errors
def install(
    backend: BackendArg,
    rpc: bool = typer.Option(False, "--rpc", help="Also build ggml's RPC backend (for `localr1 worker`)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (wheels, pip and CMake) and do nothing."),
    force: bool = typer.Option(False, "--force", help="Build even where a toolchain piece seems missing."),
    cuda_arch: str = typer.Option(
        "", "--cuda-arch", help="CUDA: compute capabilities to build for, e.g. 9.0,8.6 (default: the GPUs here)."
    ),
    cuda_version: int = typer.Option(
        0, "--cuda-version", help="CUDA: the major version to build with, 12 or 13 (default: what the driver runs)."
    ),
) -> None:
    from localr1.errors import BackendBuildError
    from localr1.machine.builds import (
        InstallPlan,
        build_failure,
        describe,
        find_toolchain,
        fix_for,
        install_plan,
        installed_lib_folder,
        pip_command,
        run_install,
        this_environment,
        verify_backend,
    )
    from localr1.machine.cuda_toolkit import write_record
    from localr1.paths import cache_dir

    backend = backend.value
    env = this_environment()
    cuda = None
    if backend == "cuda":
        cuda = _cuda_plan(cuda_arch, cuda_version)
        plan = install_plan(backend, rpc=rpc, cmake=cuda.cmake)
    else:
        plan = install_plan(backend, rpc=rpc)
    command_line = f"CMAKE_ARGS={plan.env['CMAKE_ARGS']!r} {' '.join(plan.argv)}"
    if dry_run:
        if cuda is not None:
            for part, why in cuda.reasons.items():
                sys.stdout.write(f"# {part}: {why}\n")
            if cuda.wheels:
                sys.stdout.write(" ".join(cuda.pip_argv(pip_command(env.python))) + "\n")
        sys.stdout.write(command_line + "\n")
        return
    missing = [] if cuda is not None else find_toolchain().missing(backend)  # CUDA: the wheels fill the gaps
    if missing and not force:
        piece = missing[0]
        raise BackendBuildError(
            f"cannot build the {backend} backend here: it needs {describe(piece)}, which is not found",
            hint=f"{fix_for(piece)}; then run this again (or --force to try anyway).",
        )
    if env.kind == "system":
        sys.stderr.write(
            "Warning: localr1 runs from the system Python, not from its own environment (pipx or a venv); "
            "the rebuild changes llama-cpp-python for everything that uses this Python.\n"
        )
    log = cache_dir() / "logs" / f"backend-{backend}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    sys.stderr.write(f"Rebuilding llama-cpp-python {plan.version} for {backend} in {env.prefix} (5-20 minutes)\n")
    sys.stderr.write(f"Log: {log}\n")
    progress = _BuildProgress()
    try:
        if cuda is not None and cuda.wheels:
            sys.stderr.write(f"Fetching NVIDIA's CUDA {cuda.major} parts: {', '.join(cuda.wheels)}\n")
            argv = tuple(cuda.pip_argv(pip_command(env.python)))
            wheels = InstallPlan("cuda-wheels", False, argv, {"CMAKE_ARGS": ""}, "")
            if (code := run_install(wheels, log.with_suffix(".wheels.log"), on_line=progress)) != 0:
                raise BackendBuildError(
                    f"pip could not install {', '.join(cuda.wheels)} (exit code {code})",
                    hint=f"The log is in {log.with_suffix('.wheels.log')}; PyPI must be reachable.",
                )
        code = run_install(plan, log, on_line=progress)
    finally:
        progress.end()
    if code != 0:
        why = build_failure(log.read_text(errors="replace").splitlines())
        raise BackendBuildError(
            f"the {backend} build failed{': ' + why[:240] if why else f' (pip exit code {code})'}",
            hint=f"The whole log is in {log}; `localr1 doctor` checks the toolchain.",
        )
    if cuda is not None:
        write_record(installed_lib_folder(env.python), cuda)
    ok, devices, skipped = verify_backend(env.python, backend)
    if not ok and skipped and devices:  # built; this machine cannot run it (no driver or GPU here)
        sys.stderr.write(f"Done: the {backend} build is installed; on this machine {skipped}.\n")
        return
    if not ok:
        raise BackendBuildError(
            f"llama-cpp-python was rebuilt, but llama.cpp lists no {backend} device ({', '.join(devices) or 'none'})",
            hint=f"Check the GPU driver (`localr1 doctor`); the build log is in {log}.",
        )
    sys.stderr.write(f"Done: llama.cpp now has {', '.join(devices)}. `localr1 hw` shows what localr1 will use.\n")
