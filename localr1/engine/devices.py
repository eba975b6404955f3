"""llama.cpp's compute devices (ggml's backend registry), read through ctypes.

Used to report which backends this build of llama.cpp has (``localr1 hw``) and to find the buffer type of
each device, which the tensor placement of offload mode hands to llama.cpp.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localr1.engine.backend import init_backend
from localr1.engine.bindings import load_submodule
from localr1.errors import EngineError

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


def model_devices(devices: list[Device] | None = None) -> list[Device]:
    """The devices llama.cpp gives a model, in its order (llama_model_load_from_file's default selection): the
    RPC workers' devices first, then the GPUs, then integrated GPUs only when there is no GPU. A tensor split
    is indexed in this order."""
    devices = list_devices() if devices is None else devices
    remote = [d for d in devices if d.name.startswith("RPC")]
    gpus = [d for d in devices if d.kind == "gpu" and not d.name.startswith("RPC")]
    igpus = [d for d in devices if d.kind == "igpu"] if not gpus else []
    return remote + gpus + igpus


def tensor_split(main: str, devices: list[Device] | None = None) -> list[float]:
    """llama.cpp's tensor_split that gives every layer to ``main``: "local" (this machine's GPUs, shared by
    free memory as llama.cpp shares them) or one worker device's name ("RPC1"); the other devices get none
    (tensor rules may still place tensors on them)."""
    order = model_devices(devices)
    if main == "local":
        split = [0.0 if d.name.startswith("RPC") else float(max(d.memory_free, 1)) for d in order]
    else:
        split = [1.0 if d.name == main else 0.0 for d in order]
    if not any(split):
        raise EngineError(
            f"no device {main!r} to hold the layers among {', '.join(d.name for d in order) or 'none'}",
            hint="The workers or GPUs changed since the plan: plan again (localr1 plan --workers ...).",
        )
    return split
