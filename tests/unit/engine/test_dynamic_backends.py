"""Where a CUDA build cannot run (no driver, no GPU, a driver too old), the CUDA backend is skipped with the
reason and the rest loads: stand-ins for the CUDA libraries and the driver (the real build is checked on the
CPU by tests/integration/test_cuda_build.py, where it is cached)."""

from __future__ import annotations

import ctypes
import json

from localr1.engine.backend import CUDA_RECORD, cuda_problem


class Driver:
    """libcuda.so.1's three calls that matter here."""

    def __init__(self, version: int = 13000, init: int = 0, devices: int = 1) -> None:
        self.version, self.init, self.devices = version, init, devices

    def cuDriverGetVersion(self, ref) -> int:  # noqa: N802 - the C name
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int))[0] = self.version
        return 0

    def cuInit(self, flags) -> int:  # noqa: N802
        return self.init

    def cuDeviceGetCount(self, ref) -> int:  # noqa: N802
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int))[0] = self.devices
        return 0


def build(tmp_path, *, cuda: int = 13, libs: bool = True):
    lib_dir = tmp_path / "wheel" / "lib"
    lib_dir.mkdir(parents=True)
    if libs:
        for stem in ("libcudart", "libcublasLt", "libcublas"):
            (lib_dir / f"{stem}.so.{cuda}").write_text("")
    (tmp_path / CUDA_RECORD).write_text(json.dumps({"cuda": cuda, "archs": ["90"], "lib_dirs": [str(lib_dir)]}))
    return tmp_path


def opener(driver, loaded):
    def open_library(name: str):
        loaded.append(name)
        if name == "libcuda.so.1":
            if driver is None:
                raise OSError("libcuda.so.1: cannot open shared object file")
            return driver
        return object()

    return open_library


def test_the_build_runs_where_driver_and_gpu_are_there(tmp_path):
    loaded: list[str] = []
    assert cuda_problem(build(tmp_path), opener(Driver(), loaded)) is None
    # the build's own CUDA libraries first (the wheels' folder), then the driver
    assert [n.rsplit("/", 1)[-1] for n in loaded] == ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13",
                                                       "libcuda.so.1"]  # fmt: skip


def test_no_driver(tmp_path):
    assert "no NVIDIA driver" in cuda_problem(build(tmp_path), opener(None, []))


def test_no_gpu(tmp_path):
    assert "no NVIDIA GPU is visible" in cuda_problem(build(tmp_path), opener(Driver(init=100), []))
    assert "no NVIDIA GPU is visible" in cuda_problem(build(tmp_path / "b"), opener(Driver(devices=0), []))


def test_a_driver_too_old_for_the_build(tmp_path):
    why = cuda_problem(build(tmp_path, cuda=13), opener(Driver(version=12040), []))
    assert "runs CUDA 12.4" in why and "needs CUDA 13" in why and "--cuda-version 12" in why


def test_the_build_s_libraries_gone(tmp_path):
    why = cuda_problem(build(tmp_path, libs=False), opener(Driver(), []))
    assert "libcudart is missing" in why and "backend install cuda" in why


def test_no_record_still_asks_the_driver(tmp_path):
    assert cuda_problem(tmp_path, opener(Driver(), [])) is None
    assert "no NVIDIA driver" in cuda_problem(tmp_path, opener(None, []))
