"""Loading llama.cpp's native library once, with its log captured, and the settings that apply to the
whole process (weight repacking). Below the engine and the device registry, which both need it."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localr1.engine import bindings
from localr1.engine.bindings import load_bindings, load_submodule
from localr1.errors import BackendMissingError, EngineError

_LOG_LINES = 200


def _lib() -> Any:
    try:
        lib = load_bindings()
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendMissingError(
            f"llama-cpp-python is not installed or failed to load ({exc})",
            hint="Reinstall localr1: pipx reinstall localr1 (or pip install llama-cpp-python).",
        ) from exc
    return lib


def set_fields(struct: Any, **values: Any) -> Any:
    """Assign fields of a ctypes struct, refusing names it does not have.

    A plain attribute assignment to a missing field is silently kept as a Python attribute and never
    reaches C: llama.cpp renames fields between versions (``use_mmap`` became ``load_mode``).
    """
    names = {name for name, *_ in type(struct)._fields_}
    for key, value in values.items():
        if key not in names:
            raise EngineError(f"this llama-cpp-python has no {type(struct).__name__}.{key}", hint="Reinstall localr1.")
        setattr(struct, key, value)
    return struct


LOAD_MODE_NONE, LOAD_MODE_MMAP, LOAD_MODE_MMAP_MLOCK = 0, 1, 3


class _NativeLog:
    """llama.cpp's log, captured: shown with --debug, otherwise kept for error messages."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self.echo = False
        self._partial = ""
        self._callback: Any = None
        self._captures: list[list[str]] = []

    def install(self, lib: Any) -> None:
        if self._callback is not None:
            return

        # llama-cpp-python's package __init__, when something runs it later, sets its own log callback
        bindings.after_full_import.append(lambda: lib.llama_log_set(self._callback, None))

        @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        def callback(level: int, text: bytes, _user: Any) -> None:
            msg = text.decode("utf-8", errors="replace") if text else ""
            if self.echo:
                sys.stderr.write(msg)
            self._partial += msg
            *done, self._partial = self._partial.split("\n")
            self.lines.extend(line for line in done if line.strip())
            for sink in self._captures:
                sink.extend(done)

        self._callback = callback  # keep it alive as long as llama.cpp may call it
        lib.llama_log_set(callback, None)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collect every complete log line written while the block runs."""
        sink: list[str] = []
        self._captures.append(sink)
        try:
            yield sink
        finally:
            # by identity: list.remove compares by value, and a nested capture holds the same lines, so it
            # would drop the outer sink instead (which then stops receiving lines and cannot be removed)
            self._captures[:] = [s for s in self._captures if s is not sink]

    def tail(self, n: int = 5) -> str:
        interesting = [ln.strip() for ln in self.lines if any(w in ln.lower() for w in ("error", "fail", "unable"))]
        return "; ".join((interesting or [ln.strip() for ln in self.lines])[-n:])


_LOG = _NativeLog()
_BACKEND_READY = False


def init_backend(*, debug: bool = False) -> Any:
    """Load the native library once, with its log captured, and its backends where they are loaded at run
    time (a build with GGML_BACKEND_DL: localr1's CUDA build)."""
    global _BACKEND_READY
    lib = _lib()
    _LOG.echo = debug
    if not _BACKEND_READY:
        _LOG.install(lib)
        lib.llama_backend_init()
        _BACKEND_READY = True
        load_dynamic_backends()
    return lib


# --- dynamic backends (GGML_BACKEND_DL) ----------------------------------------------------------------------
CUDA_RECORD = "localr1-cuda.json"  # written beside the libraries by `backend install cuda` (machine/cuda_toolkit)
_SKIPPED: dict[str, str] = {}


def skipped_backends() -> dict[str, str]:
    """The backends this build has but did not load, and why, in one line each ("cuda": "no NVIDIA driver")."""
    return dict(_SKIPPED)


def load_dynamic_backends() -> None:
    """A build with dynamic backends registers none until they are loaded: load them from llama-cpp-python's
    library folder (the CPU variant that suits this CPU, and the GPU backends). The CUDA libraries the build
    was made against (NVIDIA's wheels, or the system's) are loaded first, from the folders its record names;
    where the CUDA backend cannot run here (no driver, no GPU, a driver too old for the build) it is noted in
    ``skipped_backends`` and everything else runs as before, on the CPU."""
    libggml = load_submodule("_ggml").libggml
    libggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if libggml.ggml_backend_reg_count() > 0:  # backends built into the library: nothing to load
        return
    folder = Path(load_submodule("_ctypes_extensions").__file__).parent / "lib"
    if next(folder.glob("libggml-cuda.*"), None) is not None and (problem := cuda_problem(folder)):
        _SKIPPED["cuda"] = f"the CUDA backend is skipped: {problem}; running on the CPU"
    libggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    libggml.ggml_backend_load_all_from_path(str(folder).encode())


def _open(name: str) -> Any:
    return ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)


def cuda_problem(folder: Path, open_library: Callable[[str], Any] = _open) -> str | None:
    """Why the CUDA backend in ``folder`` cannot run here (None: it can), after loading the CUDA libraries it
    was built against so that it finds them."""
    try:
        record = json.loads((folder / CUDA_RECORD).read_text())
    except (OSError, ValueError):
        record = {}
    built_for = record.get("cuda") if isinstance(record, dict) else None
    lib_dirs = [Path(d) for d in record.get("lib_dirs", [])] if isinstance(record, dict) else []
    for stem in ("libcudart", "libcublasLt", "libcublas") if lib_dirs else ():
        found = [f for d in lib_dirs for f in sorted(d.glob(f"{stem}.so.*"))]
        if not found:
            where = ", ".join(map(str, lib_dirs))
            return f"{stem} is missing from {where} (run `localr1 backend install cuda` again)"
        try:
            open_library(str(found[0]))
        except OSError as exc:
            return f"{found[0].name} does not load ({exc})"
    try:
        cuda = open_library("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 is not installed)"
    version = ctypes.c_int(0)
    got = cuda.cuDriverGetVersion(ctypes.byref(version)) == 0
    if got and isinstance(built_for, int) and version.value // 1000 < built_for:
        return (
            f"the NVIDIA driver runs CUDA {version.value // 1000}.{version.value % 1000 // 10}, and this build "
            f"needs CUDA {built_for} (update the driver, or `localr1 backend install cuda --cuda-version "
            f"{version.value // 1000}`)"
        )
    if cuda.cuInit(0) != 0:
        return "no NVIDIA GPU is visible (the driver found none: a container without --gpus, or the GPU off)"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no NVIDIA GPU is visible"
    return None


def weight_repacking(lib: Any) -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (CPU_REPACK, AMX).

    Not on a CPU with AMX: ggml's AMX matrix multiply segfaults there on quantized weights in the
    llama.cpp that llama-cpp-python 0.3.36 builds (Q4_1, Q8_0, Q4_K_M; seen on a Sapphire Rapids-class VM,
    ggml-org/llama.cpp#20824, no fix upstream), and the AMX buffer type cannot be turned off alone. Without
    extra buffers such a CPU runs the AVX-512 kernels. ``LOCALR1_CPU_REPACK=1`` turns repacking back on
    (for a llama.cpp with the fix), ``=0`` turns it off everywhere.
    """
    forced = os.environ.get("LOCALR1_CPU_REPACK")
    if forced in ("0", "1"):
        return forced == "1"
    return b"AMX_INT8 = 1" not in (lib.llama_print_system_info() or b"")
