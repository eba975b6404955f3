"""`ask --server` and `chat --server` against a peer that is not what it claims: a mistyped port (another
program, a silent one, random bytes, TLS), or a server that lies in every field. Each is one line (exit 1),
never "internal error", never a control character from the peer on the terminal, never an unbounded read.

The peers are raw sockets on 127.0.0.1 in a thread: each answers every connection as its script says."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from peers import Peer

from localr1.cli.app import app

HEALTH = {"status": "ok", "model": "m", "slots": 1, "generating": 0, "waiting": 0, "context_per_request": 4096}
SHOW = {
    "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "details": {"family": "qwen2", "quantization_level": "Q4_K_M"},
    "model_info": {
        "general.architecture": "qwen2",
        "localr1.context_per_request": 4096,
        "localr1.text.reasoning": True,
    },
    "capabilities": ["completion", "thinking"],
}
MODELS = {"object": "list", "data": [{"id": "m"}]}


@contextlib.contextmanager
def peer(answer) -> Iterator[Peer]:
    p = Peer(answer, http=True)
    try:
        yield p
    finally:
        p.close()


def http(conn: socket.socket, status: int, body: bytes, content_type: str = "application/json") -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    conn.sendall(head.encode() + body)


def localr1_like(**overrides) -> Callable[[socket.socket, bytes], None]:
    """A server that answers like localr1 serve except where ``overrides`` (path -> bytes or a function) say."""
    routes: dict[str, object] = {
        "/health": json.dumps(HEALTH).encode(),
        "/api/show": json.dumps(SHOW).encode(),
        "/v1/models": json.dumps(MODELS).encode(),
        "/v1/completions": _events([{"choices": [{"text": "hi", "finish_reason": "stop"}]}]),
        **overrides,
    }

    def answer(conn: socket.socket, request: bytes) -> None:
        path = request.split(b" ", 2)[1].decode()
        route = routes.get(path, b'{"error": "no"}')
        if callable(route):
            route(conn)
        else:
            http(conn, 200, route, "text/event-stream" if path == "/v1/completions" else "application/json")

    return answer


def _events(chunks: list) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def ask(runner, url: str, monkeypatch, timeout: str = "2"):
    monkeypatch.setenv("LOCALR1_SERVER_TIMEOUT", timeout)
    started = time.monotonic()
    result = runner.invoke(app, ["ask", "hi", "--server", url])
    return result, time.monotonic() - started


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and fragment in lines[0], result.stderr
    assert len(lines) <= 2 and "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "\x1b" not in result.output and "\x07" not in result.output


# --- #33: a peer that is not a localr1 server ---------------------------------------------------------------
def test_another_http_server(runner, monkeypatch):
    page = b"<!DOCTYPE HTML><html><head><title>Error response</title></head><body><h1>Error response</h1>" + (
        b"<p>Error code: 404</p><p>Message: File not found.</p>" + b"<p>" + b"x" * 5000 + b"</p></body></html>"
    )
    with peer(lambda conn, _: http(conn, 404, page, "text/html")) as p:
        result, _ = ask(runner, p.url, monkeypatch)
    one_line_error(result, "is not a localr1 server: GET /health answered 404 (Error response")
    assert "<" not in result.stderr and len(result.stderr) < 600


@pytest.mark.parametrize(
    ("name", "answer", "fragment"),
    [
        ("random bytes", lambda conn, _: conn.sendall(bytes(range(256)) * 4), "did not answer in HTTP"),
        ("a TLS greeting", lambda conn, _: conn.sendall(b"\x16\x03\x01\x00\x2a\x02\x00\x00\x26\x03\x03" + b"\0" * 40),
         "did not answer in HTTP (if it is an HTTPS server, write https://)"),
        ("silence", lambda conn, _: time.sleep(20), "did not answer within 1 s"),
        ("a trickle", lambda conn, _: [conn.sendall(bytes([b])) or time.sleep(0.2) for b in b"HTTP/1.1 200 OK\r\nX: " + b"y" * 200],
         "did not answer within 1 s"),
    ],
)  # fmt: skip
def test_a_peer_that_does_not_speak_http_in_time(runner, monkeypatch, name, answer, fragment):
    with peer(answer) as p:
        result, took = ask(runner, p.url, monkeypatch, timeout="1")
    one_line_error(result, fragment)
    assert took < 15, f"{name}: {took:.1f} s"


def test_a_port_that_accepts_and_never_answers_without_a_timeout_set(runner, monkeypatch):
    """The default deadline: a silent peer is one line within about 10 s (it hung for as long as one waited)."""
    monkeypatch.delenv("LOCALR1_SERVER_TIMEOUT", raising=False)
    with peer(lambda conn, _: time.sleep(40)) as p:
        started = time.monotonic()
        result = runner.invoke(app, ["ask", "hi", "--server", p.url])
        took = time.monotonic() - started
    one_line_error(result, "did not answer within 10 s")
    assert took < 30


def test_a_bad_timeout_setting_is_one_line(runner, monkeypatch):
    monkeypatch.setenv("LOCALR1_SERVER_TIMEOUT", "soon")
    result = runner.invoke(app, ["ask", "hi", "--server", "127.0.0.1:9"])
    assert result.exit_code == 2 and "LOCALR1_SERVER_TIMEOUT" in result.stderr


# --- #34: a server that lies ----------------------------------------------------------------------------
def _huge(size: int, line: bool = False):
    """A reply announcing ``size`` bytes (or a stream with one endless line), written until the client hangs up."""

    def send(conn: socket.socket) -> None:
        kind = "text/event-stream" if line else "application/json"
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {size}\r\n\r\n".encode())
        conn.sendall(b'data: {"choices": [{"text": "' if line else b'{"template": "')
        block = b"x" * (1 << 20)
        sent = 0
        while sent < size:
            conn.sendall(block)
            sent += len(block)
            PEERS_SENT.append(len(block))

    return send


PEERS_SENT: list[int] = []


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"/api/show": b"{not json"}, "did not answer like a localr1 server"),
        ({"/api/show": b"[1, 2]"}, "did not answer like a localr1 server (/api/show is"),
        ({"/api/show": json.dumps({**SHOW, "model_info": "x"}).encode()}, "/api/show.model_info"),
        ({"/api/show": json.dumps({**SHOW, "template": 7}).encode()}, "/api/show.template"),
        ({"/v1/models": json.dumps({"data": "m"}).encode()}, "/v1/models.data"),
        ({"/v1/completions": _events([{"choices": "x"}])}, "event.choices"),
        ({"/v1/completions": _events([{"choices": [{"text": 5}]}])}, "event.choices[0].text"),
        ({"/v1/completions": _events([{"choices": [], "usage": {"prompt_tokens": "many"}}])}, "event.usage.prompt_tokens"),
        ({"/v1/completions": b"data: [[[[\n\n"}, "sent an event that is not JSON"),
        ({"/v1/completions": _events([{"error": {"message": "\x1b]0;PWNED\x07\x1b[2Jboom"}}])}, "the server failed: boom"),
        ({"/api/show": _huge(2 << 30)}, "answered /api/show with more than 16 MiB"),
        ({"/v1/completions": _huge(300 << 20, line=True)}, "sent an event longer than 4 MiB"),
    ],
)  # fmt: skip
def test_malformed_replies_are_one_line(runner, monkeypatch, overrides, fragment):
    PEERS_SENT.clear()
    with peer(localr1_like(**overrides)) as p:
        result, _ = ask(runner, p.url, monkeypatch)
    one_line_error(result, fragment)
    assert sum(PEERS_SENT) < 64 << 20  # the client stopped reading at its bound


def test_a_reply_without_usage_is_still_an_answer(runner, monkeypatch):
    with peer(localr1_like()) as p:
        result, _ = ask(runner, p.url, monkeypatch)
    assert result.exit_code == 0 and result.stdout.strip() == "hi", result.output


def test_escape_sequences_in_a_servers_words_never_reach_the_terminal(runner, monkeypatch):
    """In an error body, in the model's name, and in the text it streams."""
    evil = "\x1b]0;PWNED\x07\x1b[2J"
    refusal = json.dumps({"error": {"message": evil + "no such thing", "type": "x"}}).encode()
    with peer(localr1_like(**{"/v1/completions": lambda conn: http(conn, 400, refusal)})) as p:
        result, _ = ask(runner, p.url, monkeypatch)
    one_line_error(result, "the server answered 400: no such thing")
    streamed = _events([{"choices": [{"text": evil + "hello\x07", "finish_reason": "stop"}]}])
    named = json.dumps({"data": [{"id": evil + "m"}]}).encode()
    with peer(localr1_like(**{"/v1/completions": streamed, "/v1/models": named})) as p:
        result, _ = ask(runner, p.url, monkeypatch)
        assert result.exit_code == 0 and "hello" in result.stdout and "\x1b" not in result.output
        model = runner.invoke(app, ["ask", "hi", "--server", p.url, "--model", "other"])
    assert model.exit_code != 0 and "\x1b" not in model.output and "serves 'm'" in model.stderr


def test_chat_through_a_peer_that_is_not_a_server_is_one_line_before_the_app(runner, monkeypatch):
    from localr1.cli import chat as chat_module

    monkeypatch.setattr(chat_module, "is_terminal", lambda: True)
    monkeypatch.setenv("LOCALR1_SERVER_TIMEOUT", "1")
    with peer(lambda conn, _: conn.sendall(b"\x00\xff" * 100)) as p:
        result = runner.invoke(app, ["chat", "--server", p.url])
    one_line_error(result, "did not answer in HTTP")
    with peer(localr1_like(**{"/api/show": b"[]"})) as p:
        result = runner.invoke(app, ["chat", "--server", p.url])
    one_line_error(result, "did not answer like a localr1 server")
