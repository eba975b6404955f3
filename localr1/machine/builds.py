"""llama.cpp's compute backends: which one this machine wants, what building it needs, and the pip command
that rebuilds llama-cpp-python for it inside localr1's own environment.

llama-cpp-python compiles llama.cpp when it is installed, with the backends CMake is told to build; a plain
``pip``/``pipx install`` builds the CPU one (and Metal on Apple Silicon). This module knows nothing of the
CLI: ``localr1 doctor`` and ``localr1 backend install`` render what it finds.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from localr1.errors import BackendBuildError

BACKENDS = ("cuda", "vulkan", "metal", "cpu")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    cmake: tuple[str, ...]  # CMake flags for llama.cpp
    device_prefix: str  # what llama.cpp calls its devices ("CUDA0", "Vulkan0", "Metal")
    needs: tuple[str, ...]  # toolchain pieces (keys of Toolchain.found)
    for_vendors: tuple[str, ...]  # GPU vendors it serves best


SPECS = {
    "cuda": BackendSpec("cuda", ("-DGGML_CUDA=on",), "CUDA", ("compiler", "nvcc", "cublas"), ("nvidia",)),
    "vulkan": BackendSpec("vulkan", ("-DGGML_VULKAN=on",), "Vulkan", ("compiler", "vulkan", "glslc"), ("amd",)),
    "metal": BackendSpec("metal", ("-DGGML_METAL=on",), "Metal", ("compiler", "xcode"), ("apple",)),
    "cpu": BackendSpec("cpu", ("-DGGML_CUDA=off", "-DGGML_METAL=off", "-DGGML_VULKAN=off"), "CPU", ("compiler",), ()),
}

# What each toolchain piece is, in words
PIECES = {
    "compiler": "a C++ compiler",
    "nvcc": "the CUDA compiler (nvcc)",
    "cublas": "cuBLAS (the CUDA toolkit's libraries)",
    "vulkan": "the Vulkan headers, 1.3.272 or newer",
    "glslc": "the shader compiler glslc",
    "xcode": "Xcode's command line tools",
}

# What to install when a piece is missing, per platform (the doctor prints it as the fix).
FIXES = {
    "compiler": {
        "Linux": "sudo apt-get install build-essential  (Fedora: sudo dnf install gcc-c++)",
        "Darwin": "xcode-select --install",
        "Windows": "install Visual Studio Build Tools with the 'Desktop development with C++' workload",
    },
    "nvcc": {
        "Linux": "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads, or: sudo apt-get install "
        "nvidia-cuda-toolkit) and put its bin folder on PATH (or set CUDA_HOME)",
        "Windows": "install the CUDA toolkit from https://developer.nvidia.com/cuda-downloads",
    },
    "cublas": {
        "Linux": "install the CUDA toolkit's libraries with cuBLAS (https://developer.nvidia.com/cuda-downloads; "
        "Debian/Ubuntu with NVIDIA's repository: sudo apt-get install cuda-libraries-dev-<version>)",
        "Windows": "install the full CUDA toolkit from https://developer.nvidia.com/cuda-downloads",
    },
    "vulkan": {
        "Linux": "sudo apt-get install libvulkan-dev, if your release's is 1.3.272 or newer (Debian 12's is "
        "not), else the Vulkan SDK from https://vulkan.lunarg.com with VULKAN_SDK set",
        "Windows": "install the Vulkan SDK from https://vulkan.lunarg.com and set VULKAN_SDK",
    },
    "glslc": {
        "Linux": "sudo apt-get install glslc  (or install the Vulkan SDK: https://vulkan.lunarg.com)",
        "Windows": "install the Vulkan SDK from https://vulkan.lunarg.com (it has glslc)",
    },
    "xcode": {"Darwin": "xcode-select --install"},
}


def describe(piece: str) -> str:
    return PIECES.get(piece, piece)


def fix_for(piece: str, system: str | None = None) -> str:
    system = system or platform.system()
    fixes = FIXES.get(piece, {})
    return fixes.get(system) or next(iter(fixes.values()), f"install {piece}")


@dataclass(frozen=True)
class Toolchain:
    """The build tools found on this machine: piece -> where (a path or a version), or absent."""

    found: dict[str, str] = field(default_factory=dict)
    system: str = field(default_factory=platform.system)

    def missing(self, backend: str) -> list[str]:
        spec = SPECS[backend]
        if backend == "metal" and self.system != "Darwin":
            return ["macOS"]
        if backend == "cuda" and self.system == "Darwin":
            return ["an NVIDIA GPU (CUDA does not run on macOS)"]
        return [piece for piece in spec.needs if piece not in self.found]


def _which(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def vulkan_headers(roots: list[str] | None = None) -> str | None:
    """The Vulkan headers' folder, if they are new enough for this llama.cpp (it uses VK_EXT_layer_settings,
    from 1.3.272: Debian 12's 1.3.239 is too old)."""
    if roots is None:
        roots = [os.environ.get("VULKAN_SDK", ""), "/usr", "/usr/local", "/opt/homebrew"]
    for root in filter(None, roots):
        core = Path(root) / "include" / "vulkan" / "vulkan_core.h"
        if core.exists():
            try:
                text = core.read_text(errors="replace")
            except OSError:
                continue
            if "VK_EXT_layer_settings" in text:
                return str(core.parent)
    return None


def _cublas(toolkit: Path, cuda_home: str | None) -> str | None:
    """cuBLAS beside the toolkit nvcc belongs to (llama.cpp's CUDA backend links it), or in the system's."""
    roots = [toolkit, Path(cuda_home)] if cuda_home else [toolkit]
    for root in roots:
        for folder in [root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib"))]:
            if next(folder.glob("libcublas.so*"), None) or (folder / "cublas.lib").exists():
                return str(folder)
    for folder in (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib/aarch64-linux-gnu")):
        if next(folder.glob("libcublas.so*"), None):
            return str(folder)
    return None


def find_toolchain() -> Toolchain:
    """Look for compilers and SDKs on PATH and in their usual places (no process is started)."""
    found: dict[str, str] = {}
    if compiler := _which("c++", "g++", "clang++", "cl"):
        found["compiler"] = compiler
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = _which("nvcc") or next(
        (str(p) for p in [Path(cuda_home or "/nonexistent") / "bin" / "nvcc", Path("/usr/local/cuda/bin/nvcc")]
         if p.exists()),
        None,
    )  # fmt: skip
    if nvcc:
        found["nvcc"] = nvcc
        if cublas := _cublas(Path(nvcc).resolve().parent.parent, cuda_home):
            found["cublas"] = cublas
    if headers := vulkan_headers():
        found["vulkan"] = headers
    if glslc := _which("glslc"):
        found["glslc"] = glslc
    if platform.system() == "Darwin" and (xcrun := _which("xcrun")):
        found["xcode"] = xcrun
    if cmake := _which("cmake"):
        found["cmake"] = cmake  # optional: pip fetches CMake from PyPI when it is absent
    return Toolchain(found)


def recommended_backend(gpu_vendors: list[str], system: str | None = None) -> str:
    """The backend that serves this machine's GPUs best: CUDA for NVIDIA, Metal on Apple, Vulkan for AMD."""
    system = system or platform.system()
    for vendor in gpu_vendors:
        for name, spec in SPECS.items():
            if vendor in spec.for_vendors:
                return name
    return "metal" if system == "Darwin" and platform.machine() == "arm64" else "cpu"


# Which built backends drive a GPU of each vendor ("vulkan": a device only llama.cpp's Vulkan backend lists)
SERVES = {"nvidia": ("cuda", "vulkan"), "amd": ("vulkan",), "apple": ("metal",), "vulkan": ("vulkan",)}


def can_use(vendor: str, built: list[str]) -> bool:
    return any(b in built for b in SERVES.get(vendor, ()))


def built_backends(device_names: list[str]) -> list[str]:
    """The backends a build has, from the devices llama.cpp lists ("CUDA0" -> cuda, "Vulkan1" -> vulkan)."""
    out = []
    for name in device_names:
        for backend, spec in SPECS.items():
            if name.startswith(spec.device_prefix) and backend not in out:
                out.append(backend)
        if name.startswith("RPC") and "rpc" not in out:
            out.append("rpc")
    return out


# --- the environment localr1 runs in ------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    python: str  # the interpreter whose site-packages hold localr1 and llama-cpp-python
    prefix: str
    kind: str  # pipx | venv | system

    @property
    def writable(self) -> bool:
        return os.access(self.prefix, os.W_OK)


def this_environment() -> Environment:
    prefix = sys.prefix
    if sys.prefix == sys.base_prefix:
        kind = "system"
    elif "pipx" in Path(prefix).parts or os.environ.get("PIPX_HOME", "\0") in prefix:
        kind = "pipx"
    else:
        kind = "venv"
    return Environment(sys.executable, prefix, kind)


def llama_cpp_python_version() -> str | None:

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class InstallPlan:
    backend: str
    rpc: bool
    argv: tuple[str, ...]  # the pip command
    env: dict[str, str]  # what it adds to the environment
    version: str


def pip_command(python: str) -> list[str]:
    """pip of localr1's environment; LOCALR1_PIP replaces it (a command line), for tests and unusual setups."""
    override = os.environ.get("LOCALR1_PIP")
    if override:
        return shlex.split(override)
    return [python, "-m", "pip"]


def install_plan(backend: str, *, rpc: bool = False, env: Environment | None = None,
                 version: str | None = None, cmake: tuple[str, ...] | None = None) -> InstallPlan:  # fmt: skip
    """The pip command that rebuilds llama-cpp-python for ``backend``. ``cmake``: the backend's CMake flags
    where a plan made them (CUDA: machine/cuda_toolkit.py, with the parts and architectures found here)."""
    if backend not in SPECS:
        raise BackendBuildError(f"unknown backend {backend!r}", hint=f"Choose one of: {', '.join(BACKENDS)}.")
    env = env or this_environment()
    version = version or llama_cpp_python_version()
    if version is None:
        raise BackendBuildError(
            "llama-cpp-python is not installed in localr1's environment",
            hint=f"Reinstall localr1 (pipx reinstall localr1), or: {env.python} -m pip install llama-cpp-python",
        )
    flags = list(cmake if cmake is not None else SPECS[backend].cmake)
    if rpc:
        flags.append("-DGGML_RPC=on")
    argv = [
        *pip_command(env.python),
        "install",
        "--force-reinstall",
        "--no-deps",
        # pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS: without this it hands back the old build
        "--no-cache-dir",
        "--no-binary",
        "llama-cpp-python",
        "--verbose",  # CMake's and the compiler's output, for the progress display and the kept log
        f"llama-cpp-python=={version}",
    ]
    # scikit-build-core splits CMAKE_ARGS as a shell would: a flag with spaces in it (CUDA's include folders)
    # is quoted
    cmake_args = " ".join(shlex.quote(f) if any(c.isspace() for c in f) else f for f in flags)
    return InstallPlan(backend, rpc, tuple(argv), {"CMAKE_ARGS": cmake_args, "FORCE_CMAKE": "1"}, version)


def installed_lib_folder(python: str) -> Path:
    """llama-cpp-python's folder of native libraries in the environment of ``python``."""
    code = "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llama_cpp').origin).parent)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return Path(out.stdout.strip()) / "lib"


def build_progress(line: str) -> tuple[int, int] | None:
    """CMake/Ninja's "[123/456]" or make's "[ 42%]" in a build log line, as (done, total)."""
    text = line.strip()
    if text.startswith("[") and "]" in text:
        inner = text[1 : text.index("]")].strip()
        if inner.endswith("%") and inner[:-1].strip().isdigit():
            return int(inner[:-1]), 100
        done, _, total = inner.partition("/")
        if done.isdigit() and total.isdigit() and int(total) > 0:
            return int(done), int(total)
    return None


def build_failure(lines: list[str]) -> str | None:
    """The line of a failed build's log that says why: CMake's first error, else the compiler's, else pip's."""
    for i, line in enumerate(lines):
        if "CMake Error" in line:
            detail = next((x.strip() for x in lines[i + 1 : i + 6] if x.strip()), "")
            return f"{line.strip()} {detail}".strip()
    for line in lines:
        if " error: " in line or line.strip().startswith(("error:", "fatal error:")):
            return line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip().startswith("ERROR:")), None)


def run_install(plan: InstallPlan, log_path: Path, on_line=None) -> int:
    """Run the pip command, every line into ``log_path`` (kept), each also to ``on_line``; pip's exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **plan.env}
    with log_path.open("w", encoding="utf-8", errors="replace") as log:
        log.write(f"$ CMAKE_ARGS={plan.env['CMAKE_ARGS']!r} {' '.join(plan.argv)}\n")
        try:
            proc = subprocess.Popen(
                list(plan.argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", bufsize=1,
            )  # fmt: skip
        except OSError as exc:
            raise BackendBuildError(f"cannot run pip: {exc}", hint="Check localr1's environment.") from exc
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if on_line is not None:
                    on_line(line)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(10)
            raise
        return proc.wait()


def verify_backend(python: str, backend: str, timeout: float = 120) -> tuple[bool, list[str], str | None]:
    """Ask a fresh interpreter (the new library cannot be reloaded into this one) which devices it has: whether
    the backend's devices are among them, their names, and why the backend was skipped at load, if it was
    (a CUDA build on a machine without the driver or the GPU: built, and running on the CPU)."""
    code = (
        "from localr1.engine.devices import list_devices\nfrom localr1.engine.backend import skipped_backends\n"
        "print('\\n'.join(d.name for d in list_devices()))\n"
        "print('\\n'.join('skipped:' + k + ':' + v for k, v in skipped_backends().items()))\n"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return False, [], None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    names = [line for line in lines if not line.startswith("skipped:")]
    skipped = {k: v for k, _, v in (line[8:].partition(":") for line in lines if line.startswith("skipped:"))}
    has = backend in built_backends(names) if backend != "cpu" else bool(names)
    return out.returncode == 0 and has, names, skipped.get(backend)
