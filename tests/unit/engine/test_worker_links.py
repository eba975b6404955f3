"""The guards on worker connections (engine/rpc.py): which sockets get them and what they set. The end-to-end
check, a firewall dropping a live worker link, is tests/vulkan/test_rpc_workers.py."""

from __future__ import annotations

import socket

import pytest

from localr1.engine import rpc
from localr1.errors import UsageError


@pytest.fixture
def link():
    """A listening socket and one connection to it, both ends in this process."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    elsewhere = socket.create_server(("127.0.0.1", 0))
    other = socket.create_connection(elsewhere.getsockname())  # a connection that is not a worker's
    yield server, client, accepted, other
    for s in (server, client, accepted, other, elsewhere):
        s.close()


def keepalive(s: socket.socket) -> bool:
    return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))


def test_the_client_side_guards_only_its_connections_to_the_workers(link, monkeypatch):
    monkeypatch.setenv("LOCALR1_WORKER_TIMEOUT", "8")
    server, client, accepted, other = link
    port = server.getsockname()[1]
    assert rpc.guard_links(peers=rpc.worker_peers([f"127.0.0.1:{port}"])) == 1
    assert keepalive(client) and not keepalive(accepted) and not keepalive(other)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: unacknowledged data fails the link after the timeout
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 8000
    if hasattr(socket, "TCP_KEEPIDLE"):  # probes after a quarter of it, the last one before it ends
        idle = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        count = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle == 2 and idle + interval * count <= 8


def test_a_worker_guards_the_clients_it_accepted_not_its_listening_socket(link):
    server, client, accepted, other = link
    assert rpc.guard_links(local_port=server.getsockname()[1]) == 1
    assert keepalive(accepted) and not keepalive(server) and not keepalive(client)


def test_the_default_timeout_and_bad_values(monkeypatch):
    monkeypatch.delenv("LOCALR1_WORKER_TIMEOUT", raising=False)
    assert rpc.link_timeout() == 20
    for bad in ("0", "1", "abc", "1e9", "-5"):
        monkeypatch.setenv("LOCALR1_WORKER_TIMEOUT", bad)
        with pytest.raises(UsageError, match="LOCALR1_WORKER_TIMEOUT"):
            rpc.link_timeout()
