"""A CPU thread pool for one llama.cpp context, made through ggml's backend registry.

Without one, ggml's CPU backend makes a disposable pool for every graph it computes. Where ggml is built
with OpenMP (Linux wheels) that only costs a few allocations; where it is not (Apple's clang has no OpenMP,
so every macOS build), it starts and joins ``n_threads - 1`` threads for every token. llama-cli and
llama-bench attach a pool for that reason, and so does the engine.
"""

from __future__ import annotations

import ctypes
from typing import Any

from localr1.engine.devices import ggml_base_library, ggml_library

_PARAMS_BYTES = 4096  # ggml_threadpool_params is ~530 bytes today; ggml fills it, localr1 never reads it


class CpuThreadpool:
    """ggml_threadpool_new / ggml_threadpool_free, with ggml's default parameters for ``n_threads``."""

    def __init__(self, handle: int, free: Any) -> None:
        self.handle = handle
        self._free = free

    @classmethod
    def create(cls, n_threads: int) -> CpuThreadpool | None:
        """A pool, or None where this ggml build has no CPU backend registry entry for it."""
        ggml, base = ggml_library(), ggml_base_library()
        vp = ctypes.c_void_p
        ggml.ggml_backend_reg_by_name.argtypes, ggml.ggml_backend_reg_by_name.restype = [ctypes.c_char_p], vp
        get_proc = ggml.ggml_backend_reg_get_proc_address
        get_proc.argtypes, get_proc.restype = [vp, ctypes.c_char_p], vp
        reg = ggml.ggml_backend_reg_by_name(b"CPU")
        new = get_proc(reg, b"ggml_threadpool_new") if reg else None
        free = get_proc(reg, b"ggml_threadpool_free") if reg else None
        if not new or not free:
            return None
        base.ggml_threadpool_params_init.argtypes = [vp, ctypes.c_int]
        base.ggml_threadpool_params_init.restype = None
        params = ctypes.create_string_buffer(_PARAMS_BYTES)
        base.ggml_threadpool_params_init(params, n_threads)
        handle = ctypes.CFUNCTYPE(vp, vp)(new)(ctypes.addressof(params))
        if not handle:
            return None
        return cls(handle, ctypes.CFUNCTYPE(None, vp)(free))

    def close(self) -> None:
        if self.handle:
            self._free(self.handle)
            self.handle = 0
