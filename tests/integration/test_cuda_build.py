"""localr1's CUDA build, made for real as a user makes it (tests/build_cuda_backend.sh runs `localr1 backend
install cuda`: NVIDIA's wheels for what the machine lacks, then llama-cpp-python rebuilt with dynamic
backends) in a venv of its own, then used on a machine that has no NVIDIA driver or GPU.

Marked slow: the first run builds it, about 31 minutes on a 2-core machine for sm_90 (docs/performance.md);
later runs reuse the cached venv and take seconds. Run with ``pytest -m slow tests/integration/test_cuda_build.py``.
Needs nvcc on PATH (no GPU, no cuBLAS: the build fetches it).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from localr1.engine.backend import CUDA_RECORD

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TESTS = Path(__file__).resolve().parents[1]
BUILD = TESTS / "build_cuda_backend.sh"


def _has_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def cuda_venv() -> Path:
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH: the CUDA build needs the compiler")
    out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=3 * 3600)
    assert out.returncode == 0, out.stderr[-4000:]
    return Path(out.stdout.strip().splitlines()[-1])


def _lib_folder(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/llama_cpp/lib"))
    assert found, f"no llama_cpp/lib in {venv}"
    return found[0]


def _env(tmp_path: Path) -> dict[str, str]:
    # the real machine (no simulated hardware); the isolated folders conftest set are in os.environ
    env = {k: v for k, v in os.environ.items() if k != "LOCALR1_HW"}
    return {**env, "NO_COLOR": "1"}


def test_the_build_has_a_cuda_backend_and_records_what_it_was_built_against(cuda_venv):
    lib = _lib_folder(cuda_venv)
    cuda = lib / "libggml-cuda.so"
    assert cuda.stat().st_size > 10_000_000, "the CUDA backend library is missing or empty"
    assert next(lib.glob("libggml-cpu*.so"), None) is not None, "dynamic backends: a CPU backend of its own"
    record = json.loads((lib / CUDA_RECORD).read_text())
    assert record["archs"], record
    assert isinstance(record["cuda"], int) and record["cuda"] >= 12, record
    # the CUDA libraries the backend links are where the record says, so the run time can load them first
    for stem in ("libcudart", "libcublas", "libcublasLt"):
        assert any(next(Path(d).glob(f"{stem}.so.*"), None) for d in record["lib_dirs"]), (stem, record)


def test_ask_runs_on_the_cpu_and_says_why_in_one_line(cuda_venv, tiny_r1, tmp_path):
    if _has_driver():
        pytest.skip("this machine has an NVIDIA driver: the fallback is for machines without one")
    out = subprocess.run(
        [str(cuda_venv / "bin" / "localr1"), "ask", "Say hi.", "-m", str(tiny_r1), "--max-tokens", "8",
         "--ctx", "512", "--json"],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in out.stderr.splitlines() if "CUDA backend is skipped" in line]
    assert said == [
        "Warning: the CUDA backend is skipped: no NVIDIA driver (libcuda.so.1 is not installed); running on the CPU"
    ]
    reply = json.loads(out.stdout)
    assert reply["usage"]["completion_tokens"] == 8 and reply["model"]["n_gpu_layers"] == 0, reply


def test_doctor_and_hw_say_the_cuda_backend_is_skipped(cuda_venv, tmp_path):
    if _has_driver():
        pytest.skip("this machine has an NVIDIA driver")
    for command in (["doctor"], ["hw"]):
        out = subprocess.run(
            [str(cuda_venv / "bin" / "localr1"), *command], capture_output=True, text=True, timeout=120,
            env=_env(tmp_path),
        )  # fmt: skip
        assert "no NVIDIA driver" in out.stdout + out.stderr, (command, out.stdout, out.stderr)
