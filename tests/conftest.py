from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import model_factory  # noqa: E402
from ggufs import write_gguf  # noqa: E402

_real_connect = socket.socket.connect


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return not isinstance(host, str) or host.startswith("127.") or host in ("localhost", "::1", "")


@pytest.fixture
def runner():
    """Typer's runner for the CLI, with --debug off (a test that turns it on must not leak it)."""
    from typer.testing import CliRunner

    from localr1.cli.state import state

    state.debug = False
    return CliRunner()


@pytest.fixture(autouse=True)
def network_guard(monkeypatch):
    """No test talks to anything but 127.0.0.1: any other connection fails the test.

    Downloads are offline unless a test starts the fake Hub (the ``fake_hub`` fixture)."""
    state = {"allow_loopback": True, "attempts": []}

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            state["attempts"].append(address)
            if not _is_loopback(address) or not state["allow_loopback"]:
                raise AssertionError(f"a test tried to connect to {address}")
        return _real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return state


@pytest.fixture
def fake_hub(monkeypatch):
    from fakehub import FakeHub

    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real config, models or Hugging Face cache."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("LOCALR1_CONFIG_DIR", str(root / "config"))
    monkeypatch.setenv("LOCALR1_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("LOCALR1_MODELS_DIR", str(root / "models"))
    monkeypatch.setenv("LOCALR1_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf"))
    monkeypatch.delenv("LOCALR1_MODEL", raising=False)
    monkeypatch.delenv("LOCALR1_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    # plans must not depend on the machine the tests run on
    monkeypatch.setenv("LOCALR1_HW", "gpu=none,ram=16GiB,disk=1TiB")
    return root


def _model(getter):
    try:
        return getter()
    except model_factory.ModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return _model(model_factory.smollm2_path)


@pytest.fixture(scope="session")
def r1_header() -> Path:
    return _model(model_factory.r1_7b_header_path)


@pytest.fixture(scope="session")
def tiny_r1() -> Path:
    return _model(model_factory.tiny_r1_path)


@pytest.fixture(scope="session")
def r1_template(r1_header) -> str:
    from localr1.models.gguf_info import read_gguf

    return read_gguf(r1_header, check_data=False).chat_template


@pytest.fixture
def small_gguf(tmp_path) -> Path:
    return write_gguf(tmp_path / "small.gguf")
