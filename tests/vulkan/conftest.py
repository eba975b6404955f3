"""A real non-CPU llama.cpp device without a GPU: llama-cpp-python built with Vulkan
(tests/build_vulkan_backend.sh), run on Mesa's lavapipe, in child processes (a process holds one
llama.cpp). Skipped, saying why, where the build or the Vulkan driver is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
VULKAN_DIR = Path(os.environ.get("LOCALR1_VULKAN_DIR") or Path.home() / ".cache" / "localr1-test-models" / "vulkan")
SITE = VULKAN_DIR / "site"
CHILD = Path(__file__).with_name("child.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/vulkan/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vulkan)
            item.add_marker(pytest.mark.integration)


@dataclass
class Vulkan:
    """Runs localr1 (or tests/vulkan/child.py) with the Vulkan llama.cpp and lavapipe's device visible."""

    def env(self, **extra: str) -> dict[str, str]:
        # read at call time: the isolated folders of the running test are in os.environ
        path = os.pathsep.join([str(SITE), str(TESTS / "vulkan"), str(TESTS)])
        # the real machine, not the simulated one the other tests plan for (LOCALR1_HW)
        base = {k: v for k, v in os.environ.items() if k != "LOCALR1_HW"}
        return {**base, "PYTHONPATH": path, "GGML_VK_VISIBLE_DEVICES": "0", **extra}

    def child(self, task: str, timeout: float = 300, env: dict | None = None, **args) -> dict:
        out = subprocess.run(
            [sys.executable, str(CHILD), task, json.dumps(args)], env=env or self.env(), capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def localr1(self, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "localr1", *args], env=self.env(**extra), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="session")
def vulkan() -> Vulkan:
    version = metadata.version("llama-cpp-python")
    if not (SITE / f".built-{version}-vulkan-rpc").exists():
        pytest.skip(f"no Vulkan build of llama-cpp-python {version} in {SITE}: bash tests/build_vulkan_backend.sh")
    v = Vulkan()
    devices = v.child("devices", timeout=120)["devices"]
    if not any(d["name"].startswith("Vulkan") for d in devices):
        pytest.skip(f"the Vulkan build sees no Vulkan device ({devices}): apt-get install mesa-vulkan-drivers")
    return v


@pytest.fixture(scope="session")
def tiny_moe() -> Path:
    import model_factory

    try:
        return model_factory.tiny_moe_path()
    except model_factory.ModelUnavailable as exc:
        pytest.skip(str(exc))
