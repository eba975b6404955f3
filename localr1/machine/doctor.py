"""``localr1 doctor``'s findings: what this install is, what the machine has, and for each problem the exact
command that fixes it. Plain data; the CLI renders it as text or JSON."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field, replace

from localr1 import __version__
from localr1.config import load_config
from localr1.engine.backend import skipped_backends
from localr1.engine.devices import Device, list_devices, rpc_available
from localr1.errors import LocalR1Error
from localr1.machine.builds import (
    SPECS,
    built_backends,
    can_use,
    describe,
    find_toolchain,
    fix_for,
    llama_cpp_python_version,
    recommended_backend,
    this_environment,
)
from localr1.machine.hardware import devices_as_gpus, probe
from localr1.models.resolve import hf_hub_cache, local_models
from localr1.paths import config_file, models_dir
from localr1.units import GiB

MIN_PYTHON = (3, 11)
LOW_DISK = 20 * GiB  # below this the smallest useful R1 build (r1:7b Q4_K_M, 4.7 GB) and a second one are tight


@dataclass(frozen=True)
class Problem:
    severity: str  # error (localr1 cannot work) | warning (it works, slower or with less)
    message: str
    fix: str  # the command (or the step) that fixes it


@dataclass
class Report:
    python: dict = field(default_factory=dict)
    localr1: dict = field(default_factory=dict)
    llama_cpp: dict = field(default_factory=dict)
    gpus: list = field(default_factory=list)
    toolchain: dict = field(default_factory=dict)
    disk: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _llama_cpp(report: Report) -> list:
    """llama.cpp's version and devices; the devices ([] where llama.cpp cannot be loaded)."""
    env = this_environment()
    version = llama_cpp_python_version()
    report.llama_cpp = {"llama_cpp_python": version, "devices": [], "backends": [], "rpc": False}
    if version is None:
        report.problems.append(
            Problem("error", "llama-cpp-python is not installed", f"{env.python} -m pip install llama-cpp-python")
        )
        return []
    try:
        devices = list_devices()
        rpc = rpc_available()
    except Exception as exc:  # noqa: BLE001 - a broken build is exactly what the doctor reports
        report.llama_cpp["error"] = f"{type(exc).__name__}: {exc}"
        report.problems.append(
            Problem(
                "error",
                f"llama.cpp cannot be loaded ({type(exc).__name__}: {exc})",
                "localr1 backend install cpu  (rebuilds llama-cpp-python in localr1's environment)",
            )
        )
        return []
    _record_devices(report, devices, rpc)
    return devices


def _record_devices(report: Report, devices: list, rpc: bool) -> None:
    report.llama_cpp.update(
        devices=[
            {
                "name": d.name,
                "description": d.description,
                "kind": d.kind,
                "memory_total": d.memory_total,
                "memory_free": d.memory_free,
            }
            for d in devices
        ],  # fmt: skip
        backends=built_backends([d.name for d in devices]),
        rpc=rpc,
    )


def diagnose(*, hardware=None, toolchain=None, device_names: list[str] | None = None) -> Report:
    """Everything the doctor checks. ``hardware``, ``toolchain`` and ``device_names`` replace the probes
    (simulated machines, tests)."""

    report = Report()
    env = this_environment()
    py = sys.version_info
    report.python = {"version": platform.python_version(), "executable": sys.executable}
    if (py.major, py.minor) < MIN_PYTHON:
        report.problems.append(
            Problem("error", f"Python {platform.python_version()} is too old", "install Python 3.11 or newer")
        )
    report.localr1 = {"version": __version__, "environment": env.kind, "prefix": env.prefix}

    if device_names is None:
        devices = _llama_cpp(report)
    else:  # stand-ins with the names only (tests, simulated builds)
        devices = [Device(n, "", "cpu" if n == "CPU" else "gpu", 0, 0, 0) for n in device_names]
        report.llama_cpp = {"llama_cpp_python": llama_cpp_python_version()}
        _record_devices(report, devices, any(n.startswith("RPC") for n in device_names))
    hw = _check_gpus(report, hardware or probe(backends=False), devices, toolchain or find_toolchain())
    _check_disk(report, hw)
    _check_models_and_config(report)
    return report


def _check_gpus(report: Report, hw, devices: list, toolchain) -> object:
    """The GPUs (usable by this build or not) and what building the backend they want would need; the
    machine, with the GPUs only llama.cpp knows added."""
    built = report.llama_cpp.get("backends", [])
    if not hw.gpus and devices:  # a GPU only llama.cpp knows (Vulkan without the vendor's tools)
        hw = replace(hw, gpus=tuple(devices_as_gpus(devices)))
    vendors = [g.vendor for g in hw.gpus]
    want = recommended_backend(vendors, toolchain.system)
    for g in hw.gpus:
        usable = can_use(g.vendor, built)
        report.gpus.append(
            {"name": g.name, "vendor": g.vendor, "memory_total": g.total, "memory_free": g.free, "usable": usable}
        )
    skipped = skipped_backends()
    for name, why in skipped.items():  # built, but it cannot run here: no driver, no GPU, a driver too old
        fix = (
            "install or update the NVIDIA driver (nvidia-smi must list the GPU)" if name == "cuda" else "see why above"
        )
        report.problems.append(Problem("warning", why, fix))
    if hw.gpus and devices and not skipped and not any(can_use(g.vendor, built) for g in hw.gpus):
        gpu = hw.gpus[0]
        report.problems.append(
            Problem(
                "warning",
                f"this llama.cpp is built for the CPU only: the {gpu.name} sits idle (10-30x slower)",
                f"localr1 backend install {want}",
            )
        )
    report.toolchain = {"found": dict(toolchain.found), "recommended_backend": want,
                        "missing_for_recommended": toolchain.missing(want)}  # fmt: skip
    if want != "cpu" and want not in built:
        for piece in toolchain.missing(want):
            report.problems.append(
                Problem("warning", f"building the {want} backend needs {describe(piece)}: not found", fix_for(piece))
            )
    if "compiler" not in toolchain.found:
        report.problems.append(
            Problem("warning", "no C++ compiler found: llama-cpp-python cannot be rebuilt", fix_for("compiler"))
        )
    return hw


def _check_disk(report: Report, hw) -> None:
    """Free space where models are kept."""
    report.disk = {"path": hw.disk_path, "free": hw.disk_free}
    if hw.disk_free is not None and hw.disk_free < LOW_DISK:
        report.problems.append(
            Problem(
                "warning",
                f"only {hw.disk_free / GiB:.1f} GiB free where models are kept ({hw.disk_path})",
                "free some space (localr1 rm MODEL), or use a bigger disk: export HF_HUB_CACHE=/bigger/disk/hf "
                "(downloads) LOCALR1_MODELS_DIR=/bigger/disk/models (converted and quantized files)",
            )
        )


def _check_models_and_config(report: Report) -> None:
    """The models on disk (the catalog readable) and the config file (valid)."""

    try:
        found = local_models()
    except Exception as exc:  # noqa: BLE001 - a broken catalog is a problem to report, not a crash
        found = []
        report.problems.append(Problem("error", f"the model catalog cannot be read: {exc}", "localr1 models --debug"))
    report.models = {
        "folders": [str(models_dir()), str(hf_hub_cache())],
        "downloaded": [{"name": m.name, "path": str(m.path)} for m in found],
    }
    if not found:
        report.problems.append(
            Problem("warning", "no model downloaded yet", 'localr1 pull  (or just: localr1 ask "...")')
        )

    path = config_file()
    report.config = {"path": str(path), "exists": path.exists()}
    try:
        load_config()
    except LocalR1Error as exc:
        report.problems.append(Problem("error", exc.message, exc.hint or f"fix or remove {path}"))


def idle_gpu_warning(hw) -> str | None:
    """One line when a usable GPU sits idle because this llama.cpp build is CPU-only, naming the fix, or
    because the build's GPU backend cannot run here (skipped at load, saying why)."""
    if hw.simulated:
        return None
    if skipped := skipped_backends():
        return next(iter(skipped.values()))
    if not hw.gpus or hw.gpu_offload_built or not hw.backends:
        return None
    gpu = hw.gpus[0]
    want = recommended_backend([g.vendor for g in hw.gpus])
    if want == "cpu" or want not in SPECS:
        return None
    return (
        f"this llama.cpp is built for the CPU only, so the {gpu.name} is not used; "
        f"`localr1 backend install {want}` rebuilds it for the GPU (10-30x faster)"
    )
