"""`localr1 worker`'s guards, and --workers' checks, without a worker running."""

from __future__ import annotations

import socket

import pytest

from localr1.cli.app import app
from localr1.cli.worker import is_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_a_worker_beyond_loopback_needs_allow_network(runner, host):
    result = runner.invoke(app, ["worker", "--host", host])
    assert result.exit_code == 2
    assert "no authentication or encryption" in result.stderr and "SSH tunnel" in result.stderr


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_a_port_in_use_is_one_line(runner):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["worker", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_without_the_rpc_backend_the_fix_is_named(runner):
    from localr1.engine.devices import backend_names

    if "RPC" in backend_names():
        pytest.skip("this llama.cpp has the RPC backend")
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 1 and "no RPC backend" in result.stderr and "--rpc" in result.stderr
    result = runner.invoke(app, ["ask", "hi", "--workers", "127.0.0.1:1"])
    assert result.exit_code == 1 and "no RPC backend" in result.stderr


@pytest.mark.parametrize("workers", ["nohost", "host:0", "host:99999", ":5"])
def test_workers_are_host_and_port(runner, workers):
    result = runner.invoke(app, ["plan", "r1:7b", "--workers", workers])
    assert result.exit_code == 2 and "is not host:port" in result.stderr


def test_workers_in_the_config(tmp_path):
    from localr1.config import load_config
    from localr1.errors import ConfigError

    path = tmp_path / "config.toml"
    path.write_text('workers = ["10.0.0.2:50052", "10.0.0.3:50052"]\n')
    assert load_config(path).workers == ["10.0.0.2:50052", "10.0.0.3:50052"]
    path.write_text('workers = ["nope"]\n')
    with pytest.raises(ConfigError, match="is not host:port"):
        load_config(path)


@pytest.mark.parametrize("threads", ["100000", "-3", "0"])
def test_worker_threads_have_asks_bounds(runner, threads):
    """--threads 100000 started a worker that died at its first client (libgomp could not make them)."""
    from localr1.cli.app import app

    result = runner.invoke(app, ["worker", "--threads", threads])
    assert result.exit_code == 2 and "--threads must be from 1" in result.stderr, result.output
