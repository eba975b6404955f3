"""llama.cpp's compute devices (ggml's backend registry), read through ctypes.

Used to report which backends this build of llama.cpp has (``localr1 hw``) and to find the buffer type of
each device, which the tensor placement of offload mode hands to llama.cpp.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    name: str  # "CPU", "CUDA0", "Metal", "Vulkan0", ...
    description: str
    kind: str  # cpu | gpu | igpu | accel
    memory_free: int
    memory_total: int
    handle: int  # ggml_backend_dev_t, for buffer types

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("gpu", "igpu")


@functools.lru_cache(maxsize=1)
def ggml_library() -> Any:
    from localr1.engine.backend import init_backend
    from localr1.engine.bindings import load_submodule

    g = load_submodule("_ggml")  # loads libggml from llama-cpp-python's own lib folder

    init_backend()  # llama_backend_init registers the backends
    lib = g.libggml
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.ggml_backend_dev_count.restype = sz
    lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [sz], vp
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = [vp], ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [vp], ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_buffer_type.argtypes, lib.ggml_backend_dev_buffer_type.restype = [vp], vp
    lib.ggml_backend_buft_name.argtypes, lib.ggml_backend_buft_name.restype = [vp], ctypes.c_char_p
    return lib


@functools.lru_cache(maxsize=1)
def ggml_base_library() -> Any:
    from pathlib import Path

    from localr1.engine.bindings import load_submodule

    ext = load_submodule("_ctypes_extensions")
    lib = ext.load_shared_library("ggml-base", Path(ext.__file__).parent / "lib")
    lib.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    return lib


def cpu_buffer_type() -> int:
    """ggml_backend_cpu_buffer_type(): the pointer llama.cpp compares CPU overrides against."""
    return ggml_base_library().ggml_backend_cpu_buffer_type()


def list_devices() -> list[Device]:
    lib = ggml_library()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"?").decode(),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "unknown"),
                memory_free=free.value,
                memory_total=total.value,
                handle=dev,
            )
        )
    return out


def buffer_type(device: Device) -> tuple[int, str]:
    """The device's default buffer type (a ggml_backend_buffer_type_t) and its name."""
    lib = ggml_library()
    buft = lib.ggml_backend_dev_buffer_type(device.handle)
    return buft, (lib.ggml_backend_buft_name(buft) or b"?").decode()


def backend_names() -> list[str]:
    """The backends this llama.cpp registered ("CPU", "CUDA", "Vulkan", "RPC", ...), devices or not."""
    lib = ggml_library()
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.argtypes, lib.ggml_backend_reg_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes, lib.ggml_backend_reg_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    return [
        (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"?").decode()
        for i in range(lib.ggml_backend_reg_count())
    ]


def rpc_available() -> bool:
    """Whether this build has ggml's RPC backend (llama.cpp built with -DGGML_RPC=on)."""
    return "RPC" in backend_names()
