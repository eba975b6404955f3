"""Loading llama.cpp's native library once, with its log captured, and the settings that apply to the
whole process (weight repacking). Below the engine and the device registry, which both need it."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

from localr1.engine import bindings
from localr1.engine.bindings import load_bindings
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
    """Load the native library once, with its log captured."""
    global _BACKEND_READY
    lib = _lib()
    _LOG.echo = debug
    if not _BACKEND_READY:
        _LOG.install(lib)
        lib.llama_backend_init()
        _BACKEND_READY = True
    return lib


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
