"""``localr1 doctor`` and ``localr1 backend install`` through Typer's runner; the rebuild runs a fake pip
(LOCALR1_PIP) that records its command line and environment instead of compiling llama.cpp."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine
from localr1.machine import builds as backends
from localr1.machine import cuda_toolkit
from localr1.machine.builds import Toolchain
from localr1.machine.hardware import GPU, Hardware
from localr1.units import GiB

FULL = Toolchain(
    {"compiler": "/usr/bin/c++", "nvcc": "/usr/local/cuda/bin/nvcc", "cublas": "/usr/local/cuda/lib64",
     "vulkan": "/usr/include/vulkan", "glslc": "/usr/bin/glslc", "xcode": "/usr/bin/xcrun"},
    system="Darwin",  # metal is buildable only there; cuda's check is skipped below for it
)  # fmt: skip


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """A pip that prints a CMake-like build and records argv and CMAKE_ARGS; FAKE_PIP_FAIL makes it fail."""
    record = tmp_path / "pip-calls.jsonl"
    script = tmp_path / "fake_pip.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            with open({str(record)!r}, "a") as f:
                f.write(json.dumps({{"argv": sys.argv[1:], "cmake_args": os.environ.get("CMAKE_ARGS")}}) + "\\n")
            print("Building wheel for llama-cpp-python (pyproject.toml): started")
            for i in range(1, 5):
                print(f"  [{{i}}/4] Building CXX object ggml/src/part{{i}}.cpp.o")
            if os.environ.get("FAKE_PIP_FAIL"):
                print("  CMake Error at vendor/llama.cpp/ggml/src/ggml-vulkan/CMakeLists.txt:10 (find_package):")
                print("    Could NOT find Vulkan (missing: glslc)")
                print("ERROR: Could not build wheels for llama-cpp-python")
                sys.exit(1)
            print("Successfully installed llama-cpp-python-0.3.36")
            """
        )
    )
    monkeypatch.setenv("LOCALR1_PIP", f"{sys.executable} {script}")
    monkeypatch.setattr(backends, "find_toolchain", lambda: FULL)
    monkeypatch.setattr(
        backends, "verify_backend", lambda python, backend: (True, ["CPU", f"{backend.upper()}0"], None)
    )

    def calls():
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    return calls


@pytest.mark.parametrize(("backend", "flag"), [("cuda", "-DGGML_CUDA=on"), ("vulkan", "-DGGML_VULKAN=on"),
                                                ("metal", "-DGGML_METAL=on"), ("cpu", "-DGGML_CUDA=off")])  # fmt: skip
def test_backend_install_runs_pip_with_the_backends_flags(runner, fake_pip, backend, flag, monkeypatch, tmp_path):
    if backend == "cuda":  # a driver-only machine: NVIDIA's wheels first (fake pip too), then the build
        monkeypatch.setattr(cuda_toolkit, "driver_info", lambda: cuda_toolkit.DriverInfo((13, 0), ("9.0",)))
        monkeypatch.setattr(cuda_toolkit, "find_parts", lambda roots, nvcc=None: {})
        monkeypatch.setattr(backends, "installed_lib_folder", lambda python: tmp_path)
    result = runner.invoke(app, ["backend", "install", backend, "--rpc"])
    assert result.exit_code == 0, result.output
    if backend == "cuda":
        wheels, call = fake_pip()
        assert wheels["argv"][:2] == ["install", "--no-deps"] and "nvidia-cublas" in wheels["argv"]
        assert "-DGGML_BACKEND_DL=on" in call["cmake_args"] and "-DCMAKE_CUDA_ARCHITECTURES=90" in call["cmake_args"]
        record = json.loads((tmp_path / "localr1-cuda.json").read_text())  # for the run time
        assert record["cuda"] == 13 and record["lib_dirs"][0].endswith("cu13/nvidia/cu13/lib")
    else:
        (call,) = fake_pip()
    assert flag in call["cmake_args"] and "-DGGML_RPC=on" in call["cmake_args"]
    assert call["argv"][:4] == ["install", "--force-reinstall", "--no-deps", "--no-cache-dir"]
    assert call["argv"][-1].startswith("llama-cpp-python==")
    assert "compiling llama.cpp: 100%" in result.stderr  # the progress, from CMake's [n/N] lines
    assert f"llama.cpp now has CPU, {backend.upper()}0" in result.stderr
    log = result.stderr.split("Log: ", 1)[1].split("\n", 1)[0]
    assert "Successfully installed" in Path(log).read_text()  # the whole build log is kept


def test_backend_install_refuses_without_the_toolchain(runner, fake_pip, monkeypatch):
    monkeypatch.setattr(backends, "find_toolchain", lambda: Toolchain({"compiler": "c++"}, system="Linux"))
    result = runner.invoke(app, ["backend", "install", "vulkan"])
    assert result.exit_code == 1
    assert "it needs the Vulkan headers, 1.3.272 or newer, which is not found" in result.stderr
    assert "Traceback" not in result.output and fake_pip() == []  # nothing was run
    result = runner.invoke(app, ["backend", "install", "metal"])
    assert "it needs macOS" in result.stderr


def test_backend_install_failure_names_the_cause_and_the_log(runner, fake_pip, monkeypatch):
    monkeypatch.setenv("FAKE_PIP_FAIL", "1")
    result = runner.invoke(app, ["backend", "install", "vulkan"])
    assert result.exit_code == 1
    assert "the vulkan build failed: " in result.stderr and "Could NOT find Vulkan" in result.stderr
    assert "The whole log is in " in result.stderr and "Traceback" not in result.output


def test_backend_install_cuda_dry_run_prints_the_whole_plan(runner, fake_pip, monkeypatch):
    """This machine's case: nvcc 13 and its runtime, no cuBLAS, no driver; an architecture asked for."""
    nvcc = cuda_toolkit.Part(13, Path("/usr/local/cuda-13.0"), binary=Path("/usr/local/cuda-13.0/bin/nvcc"))
    runtime = cuda_toolkit.Part(13, nvcc.root, nvcc.root / "include", (nvcc.root / "lib64" / "libcudart.so.13",))
    monkeypatch.setattr(cuda_toolkit, "driver_info", lambda: cuda_toolkit.DriverInfo())
    monkeypatch.setattr(cuda_toolkit, "find_parts", lambda roots, nvcc_=None: {"nvcc": nvcc, "runtime": runtime})
    monkeypatch.setattr(cuda_toolkit, "driver_library", lambda: None)
    result = runner.invoke(app, ["backend", "install", "cuda", "--dry-run", "--cuda-arch", "9.0,8.6"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "# nvcc: found at /usr/local/cuda-13.0/bin/nvcc" in lines
    assert "# cublas: missing: from nvidia-cublas" in lines and "# cccl: missing: from nvidia-cuda-cccl" in lines
    assert " install --no-deps --upgrade --target " in lines[-2] and lines[-2].endswith(
        "nvidia-cublas nvidia-cuda-cccl"
    )
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;90" in lines[-1] and "-DGGML_CUDA_NO_VMM=on" in lines[-1]
    assert "-DCMAKE_CUDA_FLAGS=-I" in lines[-1] and "cuda-toolkit/cu13/nvidia/cu13/include" in lines[-1]
    assert fake_pip() == []  # nothing was run
    bad = runner.invoke(app, ["backend", "install", "cuda", "--dry-run", "--cuda-arch", "sm_90"])
    assert bad.exit_code == 2 and "--cuda-arch takes compute capabilities" in bad.stderr


def test_backend_install_dry_run_and_bad_name(runner, fake_pip):
    result = runner.invoke(app, ["backend", "install", "vulkan", "--dry-run"])
    assert result.exit_code == 0 and result.stdout.startswith("CMAKE_ARGS='-DGGML_VULKAN=on' ")
    assert fake_pip() == []
    assert runner.invoke(app, ["backend", "install", "rocm"]).exit_code == 2


def test_doctor_text_and_json(runner):
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "llama.cpp    llama-cpp-python" in result.stdout and "Fix: " in result.stdout  # no model yet
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert report["ok"] is True and "CPU" in [d["name"] for d in report["llama_cpp"]["devices"]]
    assert report["python"]["version"].startswith("3.") and report["localr1"]["environment"] in (
        "venv",
        "pipx",
        "system",
    )
    assert {"severity": "warning", "message": "no model downloaded yet"}.items() <= report["problems"][-1].items()


def test_doctor_exits_1_on_a_broken_config(runner, tmp_path, monkeypatch):
    from localr1.paths import config_file

    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text("ctx = [not toml")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1 and "Error:" in result.stdout and "Fix:" in result.stdout


def test_ask_warns_once_when_the_gpu_sits_idle(runner, small_gguf, monkeypatch):
    """A machine with an NVIDIA GPU and a CPU-only llama.cpp: one warning line naming the fix."""
    import localr1.machine.hardware

    hw = Hardware(
        os="Linux x86_64", cpu="test", physical_cores=2, simd=(), ram_total=16 * GiB, ram_available=12 * GiB,
        gpus=(GPU("NVIDIA GeForce RTX 4090", "nvidia", 24 * GiB, 23 * GiB, "8.9", bandwidth_gbs=1008),),
        disk_free=100 * GiB, disk_path="/models", backends=("CPU",),
    )  # fmt: skip
    for module in (localr1.machine.hardware, loader_module):  # (the loader imports it at its top)
        monkeypatch.setattr(module, "machine", lambda simulation=None, backends=True: hw)
    engine = FakeEngine([["<think>\n", "hm", "</think>", "\n\n", "4"]])
    monkeypatch.setattr(loader_module, "load_engine", lambda path, header, options, cancel=None: engine)
    result = runner.invoke(app, ["ask", "What is 2+2?", "--model", str(small_gguf)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "RTX 4090 is not used" in warnings[0]
    assert "`localr1 backend install cuda`" in warnings[0]
    assert result.stdout == "4\n"
