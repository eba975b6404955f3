"""Which backend a machine wants, what building it needs, and the pip command that rebuilds it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from localr1.errors import BackendBuildError
from localr1.machine.builds import (
    SPECS,
    Environment,
    Toolchain,
    build_failure,
    build_progress,
    built_backends,
    can_use,
    install_plan,
    recommended_backend,
)
from localr1.machine.doctor import diagnose, idle_gpu_warning
from localr1.machine.hardware import GPU, Hardware
from localr1.units import GiB

ENV = Environment("/opt/localr1/bin/python", "/opt/localr1", "pipx")


@pytest.mark.parametrize(
    ("backend", "flags"),
    [
        ("cuda", "-DGGML_CUDA=on"),  # the CUDA plan (machine/cuda_toolkit.py) adds the rest
        ("vulkan", "-DGGML_VULKAN=on"),
        ("metal", "-DGGML_METAL=on"),
        ("cpu", "-DGGML_CUDA=off -DGGML_METAL=off -DGGML_VULKAN=off"),
    ],
)
def test_install_plan_per_backend(backend, flags, monkeypatch):
    monkeypatch.delenv("LOCALR1_PIP", raising=False)
    plan = install_plan(backend, env=ENV, version="0.3.36")
    assert plan.env["CMAKE_ARGS"] == flags
    assert plan.argv[:3] == ("/opt/localr1/bin/python", "-m", "pip")
    # the same version, from source, never pip's cached wheel (keyed by the sdist, not by CMAKE_ARGS)
    assert plan.argv[-1] == "llama-cpp-python==0.3.36"
    assert {"--force-reinstall", "--no-deps", "--no-cache-dir", "--no-binary"} <= set(plan.argv)
    assert "-DGGML_RPC=on" in install_plan(backend, env=ENV, version="0.3.36", rpc=True).env["CMAKE_ARGS"]


def test_a_cuda_plans_flags_reach_the_build():
    import shlex

    flags = ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=86;89", "-DCMAKE_CUDA_FLAGS=-I/a b -I/c")
    plan = install_plan("cuda", env=ENV, version="0.3.36", cmake=flags)
    # scikit-build-core splits CMAKE_ARGS as a shell does: the flag with spaces comes back whole
    assert shlex.split(plan.env["CMAKE_ARGS"]) == list(flags)


def test_unknown_backend_and_missing_binding():
    with pytest.raises(BackendBuildError, match="unknown backend"):
        install_plan("rocm", env=ENV, version="1")


def test_toolchain_pieces():
    bare = Toolchain({}, system="Linux")
    assert bare.missing("cuda") == ["compiler", "nvcc", "cublas"]
    assert bare.missing("vulkan") == ["compiler", "vulkan", "glslc"]
    assert bare.missing("metal") == ["macOS"]
    assert Toolchain({"compiler": "/usr/bin/c++"}, system="Linux").missing("cpu") == []
    assert Toolchain({"compiler": "c++", "nvcc": "nvcc"}, system="Linux").missing("cuda") == ["cublas"]
    assert Toolchain({"compiler": "c++", "xcode": "xcrun"}, system="Darwin").missing("metal") == []
    assert Toolchain({}, system="Darwin").missing("cuda")[0].startswith("an NVIDIA GPU")


def test_vulkan_headers_must_be_new_enough(tmp_path):
    """This llama.cpp uses VK_EXT_layer_settings: Debian 12's headers (1.3.239) lack it."""
    from localr1.machine.builds import vulkan_headers

    include = tmp_path / "include" / "vulkan"
    include.mkdir(parents=True)
    (include / "vulkan_core.h").write_text("#define VK_HEADER_VERSION 239\n")
    assert vulkan_headers([str(tmp_path)]) is None
    (include / "vulkan_core.h").write_text("#define VK_HEADER_VERSION 309\n#define VK_EXT_layer_settings 1\n")
    assert vulkan_headers([str(tmp_path)]) == str(include)


def test_recommended_backend_and_what_a_build_has():
    assert recommended_backend(["nvidia"], "Linux") == "cuda"
    assert recommended_backend(["amd"], "Linux") == "vulkan"
    assert recommended_backend(["apple"], "Darwin") == "metal"
    assert recommended_backend([], "Linux") == "cpu"
    assert built_backends(["CPU", "CUDA0", "CUDA1", "RPC[127.0.0.1:50052]"]) == ["cpu", "cuda", "rpc"]
    assert built_backends(["CPU", "Vulkan0"]) == ["cpu", "vulkan"]
    assert can_use("nvidia", ["cpu", "vulkan"]) and not can_use("nvidia", ["cpu"]) and not can_use("amd", ["cuda"])
    assert set(SPECS) == {"cuda", "vulkan", "metal", "cpu"}


def test_build_progress_and_failure_lines():
    assert build_progress("  [12/345] Building CXX object ggml/src/ggml.cpp.o") == (12, 345)
    assert build_progress("[ 42%] Building C object") == (42, 100)
    assert build_progress("[notes] nothing") is None and build_progress("plain") is None
    log = [
        "  -- Configuring done",
        "  CMake Error in vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt:",
        "",
        '    CUDA_ARCHITECTURES is set to "native", but no GPU was detected.',
        "ERROR: Could not build wheels for llama-cpp-python",
    ]
    assert "no GPU was detected" in build_failure(log)
    assert build_failure(["x.cpp:3:1: error: 'foo' was not declared", "ERROR: Failed"]).startswith("x.cpp:3:1: error")
    assert build_failure(["ok", "ERROR: Could not build wheels"]) == "ERROR: Could not build wheels"
    assert build_failure(["all fine"]) is None


def _hw(gpus, backends=("CPU",), simulated=False):
    return Hardware(
        os="Linux x86_64", cpu="test", physical_cores=8, simd=(), ram_total=64 * GiB, ram_available=60 * GiB,
        gpus=tuple(gpus), disk_free=500 * GiB, disk_path="/models", backends=backends, simulated=simulated,
    )  # fmt: skip


RTX = GPU("NVIDIA GeForce RTX 4090", "nvidia", 24 * GiB, 23 * GiB, "8.9", bandwidth_gbs=1008)


def test_idle_gpu_warning_names_the_fix():
    warning = idle_gpu_warning(_hw([RTX]))
    assert "RTX 4090" in warning and "localr1 backend install cuda" in warning
    assert idle_gpu_warning(_hw([RTX], backends=("CPU", "CUDA0"))) is None  # the GPU is used
    assert idle_gpu_warning(_hw([])) is None  # no GPU
    assert idle_gpu_warning(_hw([RTX], backends=())) is None  # llama.cpp not probed: nothing known
    amd = GPU("Radeon RX 7900 XTX", "amd", 24 * GiB, 24 * GiB)
    assert "backend install vulkan" in idle_gpu_warning(_hw([amd]))


def test_doctor_reports_each_problem_with_its_fix():
    bare = Toolchain({}, system="Linux")
    report = diagnose(hardware=_hw([RTX]), toolchain=bare, device_names=["CPU"])
    problems = {p.message: p for p in report.problems}
    idle = next(p for m, p in problems.items() if "sits idle" in m)
    assert idle.fix == "localr1 backend install cuda" and idle.severity == "warning"
    assert any("nvcc" in m and "apt-get install nvidia-cuda-toolkit" in p.fix for m, p in problems.items())
    assert any("C++ compiler" in m and "build-essential" in p.fix for m, p in problems.items())
    assert any("no model downloaded" in m for m in problems)
    assert report.gpus == [{"name": RTX.name, "vendor": "nvidia", "memory_total": RTX.total,
                            "memory_free": RTX.free, "usable": False}]  # fmt: skip
    assert report.ok  # warnings only: localr1 works, slower
    good = diagnose(
        hardware=_hw([RTX], backends=("CPU", "CUDA0")),
        toolchain=Toolchain({"compiler": "c++", "nvcc": "nvcc", "cublas": "/usr/lib"}, system="Linux"),
        device_names=["CPU", "CUDA0"],
    )
    assert good.gpus[0]["usable"] and not any("idle" in p.message or "needs" in p.message for p in good.problems)
    low = diagnose(hardware=replace(_hw([]), disk_free=3 * GiB), toolchain=bare, device_names=["CPU"])
    assert any("3.0 GiB free" in p.message and "LOCALR1_MODELS_DIR" in p.fix for p in low.problems)
    assert report.to_dict()["ok"] is True and report.to_dict()["problems"][0]["fix"]
