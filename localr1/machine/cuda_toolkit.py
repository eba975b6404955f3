"""What a CUDA build of llama.cpp needs, what this machine has of it, and NVIDIA's PyPI wheels for the rest.

A CUDA build needs the compiler (nvcc), the CUDA runtime (libcudart and its headers), cuBLAS (headers and
libraries) and CCCL (CUB/Thrust headers), all of one CUDA major version that the driver supports; the
driver's own library (libcuda) is linked for llama.cpp's virtual-memory pool where it is present. NVIDIA
publishes every one of those parts as a wheel on PyPI (``nvidia-cuda-nvcc``, ``nvidia-cuda-runtime``,
``nvidia-cublas``, ``nvidia-cuda-cccl`` for CUDA 13; the same names with ``-cu12`` for CUDA 12), so a machine
with only the NVIDIA driver can build from one command: the missing parts are installed with
``pip install --target`` into localr1's own toolkit folder and CMake is pointed at them.

The build is made with llama.cpp's dynamic backends (``GGML_BACKEND_DL``: one shared library per backend,
loaded at run time), so the same install starts where the driver or the GPU is missing and runs on the CPU
(engine/backend.py). Pure logic over what ``find_parts`` reads off the disk; ``nvidia-smi`` is asked for the
driver's CUDA version and the GPUs' compute capabilities by ``driver_info``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PARTS = ("nvcc", "runtime", "cublas", "cccl")

# NVIDIA's wheels, per CUDA major version
WHEELS = {
    13: {"nvcc": "nvidia-cuda-nvcc", "runtime": "nvidia-cuda-runtime", "cublas": "nvidia-cublas",
         "cccl": "nvidia-cuda-cccl", "crt": "nvidia-cuda-crt"},
    12: {"nvcc": "nvidia-cuda-nvcc-cu12", "runtime": "nvidia-cuda-runtime-cu12", "cublas": "nvidia-cublas-cu12",
         "cccl": "nvidia-cuda-cccl-cu12"},
}  # fmt: skip
# where each wheel puts its files under the --target folder: CUDA 13's share one tree, CUDA 12's do not
WHEEL_ROOTS = {
    13: {p: "nvidia/cu13" for p in PARTS},
    12: {"nvcc": "nvidia/cuda_nvcc", "runtime": "nvidia/cuda_runtime", "cublas": "nvidia/cublas",
         "cccl": "nvidia/cuda_cccl"},
}  # fmt: skip
# every NVIDIA generation llama.cpp's releases build for, where no GPU is visible and no --cuda-arch is given
DEFAULT_ARCHS = ("61", "70", "75", "80", "86", "89", "90")
DEFAULT_MAJOR = 13


@dataclass(frozen=True)
class DriverInfo:
    """What the NVIDIA driver says: the newest CUDA version it runs (None: no driver) and the GPUs'
    compute capabilities ("8.9")."""

    cuda: tuple[int, int] | None = None
    archs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Part:
    """One part found: its version's major (where known), the folder of its headers, its library files."""

    major: int | None
    root: Path
    include: Path | None = None
    libs: tuple[Path, ...] = ()
    binary: Path | None = None  # nvcc


@dataclass(frozen=True)
class CudaPlan:
    """How to make a CUDA build here: the CUDA major version, the wheels to install (and why), the toolkit
    folder they go into, and the CMake flags that point the build at every part."""

    major: int
    archs: tuple[str, ...]
    toolkit_dir: Path
    wheels: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)  # part -> "found at ..." / "from the wheel ..."
    cmake: tuple[str, ...] = ()
    lib_dirs: tuple[Path, ...] = ()  # where the build's CUDA libraries are at run time (recorded with it)
    vmm: bool = True  # llama.cpp's virtual-memory pool: needs libcuda to link against

    def pip_argv(self, pip: list[str]) -> list[str]:
        """``pip`` (its command line) installing the wheels into the toolkit folder."""
        return [*pip, "install", "--no-deps", "--upgrade", "--target", str(self.toolkit_dir), *self.wheels]


# --- what the machine has ----------------------------------------------------------------------------------
def _version_major(text: str) -> int | None:
    m = re.search(r"release (\d+)\.(\d+)", text) or re.search(r"CUDART_VERSION\s+(\d+?)(\d{3})\b", text)
    return int(m.group(1)) if m else None


def nvcc_major(nvcc: Path) -> int | None:
    """nvcc's CUDA major version, from the version.json beside the toolkit, else ``nvcc --version``."""
    for candidate in (nvcc.resolve().parent.parent / "version.json", nvcc.parent.parent / "version.json"):
        try:
            return int(json.loads(candidate.read_text())["cuda"]["version"].split(".")[0])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return _version_major(out)


def _libs(folder: Path, stem: str) -> tuple[Path, ...]:
    return tuple(sorted(folder.glob(f"{stem}.so*"))) if folder.is_dir() else ()


def _lib_folders(root: Path) -> list[Path]:
    return [root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib"))]


def _include_folders(root: Path) -> list[Path]:
    return [root / "include", *sorted(root.glob("targets/*/include"))]


def find_parts(roots: list[Path], nvcc: Path | None = None) -> dict[str, Part]:
    """The parts under ``roots`` (toolkit folders and wheel trees), the first root that has each winning;
    ``nvcc``: the compiler on PATH, if any."""
    found: dict[str, Part] = {}
    if nvcc is not None and nvcc.exists():
        nvcc = _real_nvcc(nvcc)
        found["nvcc"] = Part(nvcc_major(nvcc), nvcc.parent.parent, binary=nvcc)
    for root in roots:
        if "nvcc" not in found and (root / "bin" / "nvcc").exists():
            found["nvcc"] = Part(nvcc_major(root / "bin" / "nvcc"), root, binary=root / "bin" / "nvcc")
        for include in _include_folders(root):
            header_major = None
            if (include / "cuda_runtime_api.h").exists():
                text = (include / "cuda_runtime_api.h").read_text(errors="replace")
                header_major = _version_major(text)
            for lib in _lib_folders(root):
                if "runtime" not in found and header_major is not None and _libs(lib, "libcudart"):
                    found["runtime"] = Part(header_major, root, include, _libs(lib, "libcudart"))
                if "cublas" not in found and (include / "cublas_v2.h").exists() and _libs(lib, "libcublas"):
                    major = _lib_major(_libs(lib, "libcublas"))
                    found["cublas"] = Part(major, root, include, _libs(lib, "libcublas") + _libs(lib, "libcublasLt"))
            if "cccl" not in found:
                for cub in (include / "cub", include / "cccl" / "cub"):
                    if (cub / "cub.cuh").exists():
                        found["cccl"] = Part(header_major, root, cub.parent)
    return found


def _real_nvcc(nvcc: Path) -> Path:
    """The compiler itself where ``nvcc`` is a link or a wrapper script ("exec /usr/local/cuda-13.0/bin/nvcc")."""
    nvcc = nvcc.resolve()
    try:
        if nvcc.stat().st_size < 4096:
            m = re.search(r"(/\S+/bin/nvcc)\b", nvcc.read_text(errors="replace"))
            if m and Path(m.group(1)).exists():
                return Path(m.group(1)).resolve()
    except OSError:
        pass
    return nvcc


def _lib_major(files: tuple[Path, ...]) -> int | None:
    for f in files:
        m = re.search(r"\.so\.(\d+)", f.name)
        if m:
            return int(m.group(1))
    return None


def toolkit_roots() -> list[Path]:
    """Where CUDA toolkits usually are: CUDA_HOME / CUDA_PATH, /usr/local/cuda*, /usr (Debian's packages)."""
    roots = [Path(p) for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")) if p]
    roots += [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True), Path("/usr")]
    out: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in out:
            out.append(root.resolve())
    return out


def driver_library() -> Path | None:
    """libcuda to link against (the driver's, or the toolkit's stub), for llama.cpp's virtual-memory pool."""
    for folder in (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib/aarch64-linux-gnu"),
                   *(r / "lib64" / "stubs" for r in toolkit_roots())):  # fmt: skip
        lib = folder / "libcuda.so"
        if lib.exists():
            return lib
    return None


def driver_info(smi: str | None = None) -> DriverInfo:
    """The driver's CUDA version and the GPUs' compute capabilities, from ``nvidia-smi`` (none: no driver)."""
    smi = smi or shutil.which("nvidia-smi")
    if not smi:
        return DriverInfo()
    try:
        header = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
        caps = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return DriverInfo()
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header)
    archs = tuple(sorted({c.strip() for c in caps.splitlines() if re.fullmatch(r"\d+\.\d+", c.strip())}))
    return DriverInfo((int(m.group(1)), int(m.group(2))) if m else None, archs)


# --- the plan ----------------------------------------------------------------------------------------------
def plan_cuda(
    driver: DriverInfo,
    found: dict[str, Part],
    toolkit_dir: Path,
    *,
    archs: list[str] | None = None,
    major: int | None = None,
    driver_lib: Path | None = None,
) -> CudaPlan:
    """The build's parts: each found one of the right CUDA major version is used, each missing or mismatched
    one comes from NVIDIA's wheel of that version. The version: ``major`` if given, else the driver's (a
    toolkit newer than the driver builds code the driver cannot run), else the found nvcc's, else 13."""
    if major is None:
        major = driver.cuda[0] if driver.cuda else (found["nvcc"].major if "nvcc" in found else None)
    major = major or DEFAULT_MAJOR
    if major not in WHEELS:
        major = max(m for m in WHEELS if m <= major) if major > min(WHEELS) else min(WHEELS)
    chosen: dict[str, Part] = {}
    reasons: dict[str, str] = {}
    wheels: list[str] = []
    for part in PARTS:
        have = found.get(part)
        if have is not None and (have.major == major or (part == "cccl" and have.major in (None, major))):
            chosen[part] = have
            reasons[part] = f"found at {have.binary or have.include or have.root}"
            continue
        why = "missing" if have is None else f"CUDA {have.major} at {have.root}, not the driver's CUDA {major}"
        root = toolkit_dir / WHEEL_ROOTS[major][part]
        lib = root / "lib"
        names = {"runtime": ("libcudart.so", "libcudart.so.{m}"), "cublas": ("libcublas.so.{m}", "libcublasLt.so.{m}")}
        libs = tuple(lib / n.format(m=major) for n in names.get(part, ()))
        chosen[part] = Part(major, root, root / "include", libs, root / "bin" / "nvcc" if part == "nvcc" else None)
        reasons[part] = f"{why}: from {WHEELS[major][part]}"
        wheels.append(WHEELS[major][part])
        if part == "nvcc" and "crt" in WHEELS[major]:  # CUDA 13's nvcc keeps its host headers in a wheel of their own
            wheels.append(WHEELS[major]["crt"])
    archs = sorted({a.replace(".", "") for a in (archs or list(driver.archs)) if a}) or list(DEFAULT_ARCHS)
    nvcc = chosen["nvcc"]
    includes = []
    for part in ("runtime", "cublas", "cccl"):
        inc = chosen[part].include
        if inc is not None and inc != nvcc.root / "include" and inc not in includes:
            includes.append(inc)
    flags = [
        "-DGGML_CUDA=on",
        # one library per backend, loaded at run time: the install starts without a driver or a GPU
        "-DGGML_BACKEND_DL=on",
        # GGML_NATIVE is not compatible with dynamic backends; GGML_CPU_ALL_VARIANTS would be, but
        # llama-cpp-python installs only a target named ggml-cpu, not the variants (a build without a CPU
        # backend): one CPU backend for x86-64-v3 (AVX2, FMA, F16C), ggml's default without GGML_NATIVE
        "-DGGML_NATIVE=off",
        f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}",
        f"-DCMAKE_CUDA_COMPILER={nvcc.binary}",
        f"-DCUDAToolkit_ROOT={nvcc.root}",
    ]
    runtime, cublas = chosen["runtime"], chosen["cublas"]
    if runtime.root != nvcc.root and runtime.libs:
        flags.append(f"-DCUDA_cudart_LIBRARY={runtime.libs[0]}")
    if cublas.root != nvcc.root:
        by_name = {("Lt" in p.name): p for p in cublas.libs}
        flags += [f"-DCUDA_cublas_LIBRARY={by_name.get(False, cublas.root / 'lib' / f'libcublas.so.{major}')}",
                  f"-DCUDA_cublasLt_LIBRARY={by_name.get(True, cublas.root / 'lib' / f'libcublasLt.so.{major}')}"]  # fmt: skip
    if includes:
        flags.append("-DCMAKE_CUDA_FLAGS=" + " ".join(f"-I{i}" for i in includes))
    if driver_lib is not None:
        flags.append(f"-DCUDA_cuda_driver_LIBRARY={driver_lib}")
    else:  # no libcuda to link: llama.cpp's legacy memory pool instead of its virtual-memory one
        flags.append("-DGGML_CUDA_NO_VMM=on")
    lib_dirs: list[Path] = []
    for part in ("runtime", "cublas"):
        for lib in chosen[part].libs:
            if lib.parent not in lib_dirs:
                lib_dirs.append(lib.parent)
    return CudaPlan(major, tuple(archs), toolkit_dir, tuple(wheels), reasons, tuple(flags), tuple(lib_dirs),
                    driver_lib is not None)  # fmt: skip


# --- what a build records, for the run time (engine/backend.py) ---------------------------------------------
RECORD = "localr1-cuda.json"


def write_record(lib_folder: Path, plan: CudaPlan) -> Path:
    """Beside the built libraries: the CUDA version and the folders of the CUDA libraries it was built
    against (the wheels' or the system's), which the run time loads before llama.cpp's CUDA backend."""
    path = lib_folder / RECORD
    path.write_text(json.dumps({"cuda": plan.major, "archs": list(plan.archs),
                                "lib_dirs": [str(d) for d in plan.lib_dirs]}, indent=2))  # fmt: skip
    return path


def read_record(lib_folder: Path) -> dict:
    try:
        value = json.loads((lib_folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
