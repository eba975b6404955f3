"""The guards on worker connections (engine/rpc.py): which sockets get them and what they set. The end-to-end
check, a firewall dropping a live worker link, is tests/vulkan/test_rpc_workers.py."""

from __future__ import annotations

import socket

import pytest
from peers import Peer

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


# --- ggml's greeting, spoken by localr1 before ggml sees an endpoint (a wrong peer made ggml abort) --------
def _hello_reply(major: int, minor: int = 0, patch: int = 0) -> bytes:
    import struct

    return struct.pack("<Q", 28) + bytes([major, minor, patch, 0]) + bytes(24)


def _worker_like(major: int):
    def answer(conn) -> None:
        request = b""
        while len(request) < 1 + 8 + 24:
            chunk = conn.recv(64)
            if not chunk:
                return
            request += chunk
        assert request[0] == 14 and request[1:9] == (24).to_bytes(8, "little")
        conn.sendall(_hello_reply(major))

    return answer


def _trickle(conn) -> None:
    import time

    for byte in _hello_reply(7):
        conn.sendall(bytes([byte]))
        time.sleep(0.3)


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (lambda conn: conn.sendall(bytes(range(256)) * 8), "answered, but not as a worker does"),
        (lambda conn: (conn.recv(100), conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")), "not as a worker does"),
        (lambda conn: conn.sendall(b"\x16\x03\x01\x00\x2a\x02\x00\x00\x26\x03\x03" + bytes(40)), "not as a worker does"),
        (lambda conn: conn.recv(100) and __import__("time").sleep(10), "did not answer within 1 s"),
        (_trickle, "answered too slowly within 1 s"),
        (lambda conn: None, "closed the connection"),
        (_worker_like(6), "speaks RPC protocol 6.0.0"),
    ],
)  # fmt: skip
def test_a_peer_that_is_not_a_worker_is_one_line(answer, fragment):
    import time

    from localr1.errors import WorkerError

    peer = Peer(answer)
    try:
        started = time.monotonic()
        with pytest.raises(WorkerError, match=fragment) as info:
            rpc.check_reachable(peer.endpoint, timeout=1.0)
        assert time.monotonic() - started < 8
    finally:
        peer.close()
    assert peer.endpoint in info.value.message and info.value.exit_code == 3


def test_a_compatible_worker_greets_back():
    peer = Peer(_worker_like(rpc.RPC_PROTO_MAJOR))
    try:
        assert rpc.greet(peer.endpoint, 2.0) == (rpc.RPC_PROTO_MAJOR, 0, 0)
        assert rpc.check_reachable(peer.endpoint, 2.0) > 0
    finally:
        peer.close()


def test_the_greetings_constants_are_the_vendored_llama_cpps():
    """The protocol version and sizes localr1 speaks are those of the llama.cpp llama-cpp-python builds."""
    import re
    import tarfile
    from pathlib import Path

    sdists = sorted((Path.home() / ".cache" / "localr1-test-models").glob("**/llama_cpp_python-*.tar.gz"))
    if not sdists:
        pytest.skip("no llama-cpp-python sdist in the test cache to read ggml-rpc's sources from")
    with tarfile.open(sdists[-1]) as tar:

        def read(suffix: str) -> str:
            member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
            return tar.extractfile(member).read().decode()

        header, transport, source = read("ggml/include/ggml-rpc.h"), read("ggml-rpc/transport.h"), read("ggml-rpc.cpp")
    assert int(re.search(r"RPC_PROTO_MAJOR_VERSION\s+(\d+)", header)[1]) == rpc.RPC_PROTO_MAJOR
    assert int(re.search(r"RPC_PROTO_MINOR_VERSION\s+(\d+)", header)[1]) == rpc.RPC_PROTO_MINOR
    assert int(re.search(r"RPC_CONN_CAPS_SIZE = (\d+)", transport)[1]) == rpc.RPC_CONN_CAPS_SIZE
    assert f"RPC_CMD_HELLO == {rpc.RPC_CMD_HELLO}" in source
