"""The CUDA build's plan on stand-in machines: a driver and nothing else, a whole toolkit, a toolkit of another
CUDA version than the driver's, and this machine's case (nvcc and the runtime, no cuBLAS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localr1.machine.cuda_toolkit import (
    DriverInfo,
    driver_info,
    find_parts,
    plan_cuda,
    read_record,
    write_record,
)


def toolkit(root: Path, major: int, *, cublas: bool = True, cccl: bool = True) -> Path:
    """A stand-in CUDA toolkit folder: nvcc (a script printing its version), headers and libraries."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {major}.0, V{major}.0.88'\n")
    nvcc.chmod(0o755)
    inc, lib = root / "include", root / "lib64"
    inc.mkdir()
    lib.mkdir()
    (inc / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION  {major}000\n")
    (lib / f"libcudart.so.{major}").write_text("")
    (lib / "libcudart.so").write_text("")
    if cublas:
        (inc / "cublas_v2.h").write_text("")
        (lib / f"libcublas.so.{major}").write_text("")
        (lib / f"libcublasLt.so.{major}").write_text("")
    if cccl:
        (inc / "cccl" / "cub").mkdir(parents=True)
        (inc / "cccl" / "cub" / "cub.cuh").write_text("")
    return root


def flags(plan) -> dict[str, str]:
    return dict(f[2:].split("=", 1) for f in plan.cmake)


def test_a_driver_and_nothing_else_takes_every_part_from_the_wheels(tmp_path):
    target = tmp_path / "localr1" / "cu13"
    plan = plan_cuda(DriverInfo((13, 0), ("9.0",)), {}, target)
    assert plan.major == 13 and plan.archs == ("90",)
    assert plan.wheels == ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cublas",
                           "nvidia-cuda-cccl")  # fmt: skip
    f = flags(plan)
    root = target / "nvidia" / "cu13"  # CUDA 13's wheels share one tree: a whole toolkit root
    assert f["CMAKE_CUDA_COMPILER"] == str(root / "bin" / "nvcc") and f["CUDAToolkit_ROOT"] == str(root)
    assert f["GGML_BACKEND_DL"] == "on" and f["GGML_NATIVE"] == "off" and "GGML_CPU_ALL_VARIANTS" not in f
    assert "CUDA_cublas_LIBRARY" not in f and "CMAKE_CUDA_FLAGS" not in f  # all beside nvcc
    assert f["GGML_CUDA_NO_VMM"] == "on"  # no libcuda to link against
    assert plan.lib_dirs == (root / "lib",)
    argv = plan.pip_argv(["/venv/bin/python", "-m", "pip"])
    assert argv[:4] == ["/venv/bin/python", "-m", "pip", "install"] and argv[argv.index("--target") + 1] == str(target)


def test_cuda_12_wheels_for_a_cuda_12_driver(tmp_path):
    plan = plan_cuda(DriverInfo((12, 4), ("8.6", "8.9")), {}, tmp_path / "cu12")
    assert plan.major == 12 and plan.archs == ("86", "89")
    assert set(plan.wheels) == {"nvidia-cuda-nvcc-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12",
                                "nvidia-cuda-cccl-cu12"}  # fmt: skip
    f = flags(plan)  # CUDA 12's wheels each have a folder of their own: CMake is pointed at each
    assert f["CUDAToolkit_ROOT"].endswith("nvidia/cuda_nvcc")
    assert f["CUDA_cublas_LIBRARY"].endswith("nvidia/cublas/lib/libcublas.so.12")
    assert f["CUDA_cudart_LIBRARY"].endswith("nvidia/cuda_runtime/lib/libcudart.so")
    assert "nvidia/cuda_cccl/include" in f["CMAKE_CUDA_FLAGS"]


def test_a_whole_toolkit_of_the_drivers_version_needs_no_wheel(tmp_path):
    root = toolkit(tmp_path / "cuda-13.0", 13)
    found = find_parts([root])
    assert {p: found[p].major for p in found} == {"nvcc": 13, "runtime": 13, "cublas": 13, "cccl": 13}
    driver_lib = tmp_path / "libcuda.so"
    plan = plan_cuda(DriverInfo((13, 1), ()), found, tmp_path / "wheels", driver_lib=driver_lib)
    assert plan.wheels == () and all(why.startswith("found at") for why in plan.reasons.values())
    f = flags(plan)
    assert f["CUDAToolkit_ROOT"] == str(root) and f["CUDA_cuda_driver_LIBRARY"] == str(driver_lib)
    assert "GGML_CUDA_NO_VMM" not in f and plan.vmm
    assert f["CMAKE_CUDA_ARCHITECTURES"] == "61;70;75;80;86;89;90"  # no GPU visible, none asked for


def test_a_toolkit_newer_than_the_driver_is_replaced_by_the_drivers_wheels(tmp_path):
    """CUDA 13's nvcc builds code a CUDA 12 driver cannot load: every part comes in CUDA 12's wheels."""
    found = find_parts([toolkit(tmp_path / "cuda-13.0", 13)])
    plan = plan_cuda(DriverInfo((12, 8), ("8.9",)), found, tmp_path / "cu12")
    assert plan.major == 12 and len(plan.wheels) == 4
    assert "CUDA 13 at" in plan.reasons["nvcc"] and "not the driver's CUDA 12" in plan.reasons["nvcc"]
    assert flags(plan)["CMAKE_CUDA_COMPILER"].endswith("nvidia/cuda_nvcc/bin/nvcc")


def test_this_machines_case_nvcc_without_cublas(tmp_path):
    """nvcc 13 and its runtime, no cuBLAS, no driver: only nvidia-cublas, pointed at from the toolkit's build."""
    root = toolkit(tmp_path / "cuda-13.0", 13, cublas=False)
    found = find_parts([root])
    plan = plan_cuda(DriverInfo(), found, tmp_path / "cu13", archs=["9.0"])
    assert plan.major == 13 and plan.wheels == ("nvidia-cublas",)
    f = flags(plan)
    wheel = tmp_path / "cu13" / "nvidia" / "cu13"
    assert f["CUDAToolkit_ROOT"] == str(root) and f["CUDA_cublas_LIBRARY"] == str(wheel / "lib" / "libcublas.so.13")
    assert f"-I{wheel / 'include'}" in f["CMAKE_CUDA_FLAGS"]
    assert plan.lib_dirs == (root / "lib64", wheel / "lib")


def test_an_nvcc_wrapper_script_leads_to_its_toolkit(tmp_path):
    root = toolkit(tmp_path / "cuda-13.0", 13)
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {root}/bin/nvcc "$@"\n')
    assert find_parts([], wrapper)["nvcc"].root == root


def test_driver_info_reads_nvidia_smi(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\nif [ "$1" = "" ]; then echo "| NVIDIA-SMI 580.65  Driver Version: 580.65  CUDA Version: 13.0 |";'
        ' else printf "9.0\\n9.0\\n8.6\\n"; fi\n'
    )
    smi.chmod(0o755)
    assert driver_info(str(smi)) == DriverInfo((13, 0), ("8.6", "9.0"))
    assert driver_info(str(tmp_path / "absent")) == DriverInfo()


def test_the_record_beside_the_build(tmp_path):
    plan = plan_cuda(DriverInfo((13, 0), ("9.0",)), {}, tmp_path / "cu13")
    write_record(tmp_path, plan)
    assert read_record(tmp_path) == {"cuda": 13, "archs": ["90"], "lib_dirs": [str(tmp_path / "cu13/nvidia/cu13/lib")]}
    (tmp_path / "localr1-cuda.json").write_text("[1]")
    assert read_record(tmp_path) == {} and read_record(tmp_path / "none") == {}
    assert json.loads(json.dumps(read_record(tmp_path))) == {}


@pytest.mark.parametrize("major", [12, 13])
def test_the_plans_cmake_flags_are_single_tokens(tmp_path, major):
    plan = plan_cuda(DriverInfo((major, 0), ()), {}, tmp_path)
    assert all(" " not in f or f.startswith("-DCMAKE_CUDA_FLAGS=") for f in plan.cmake)
