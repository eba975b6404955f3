"""Serving the app with uvicorn: the bind checks, the start line, and a bounded drain on Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from localr1.errors import UsageError
from localr1.server.connections import BACKLOG, ConnectionLimits

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435  # Ollama's 11434 + 1: both can run side by side
DRAIN_S = 5.0  # how long in-flight requests may finish after Ctrl-C / SIGTERM


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    return host in ("localhost", "ip6-localhost") or is_loopback_address(host.strip("[]"))


def is_loopback_address(text: str) -> bool:
    """Whether ``text`` is an IP address of this machine's loopback (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, *, api_key: str | None, insecure: bool) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, not {port}")
    if not is_loopback(host) and not api_key and not insecure:
        raise UsageError(
            f"--host {host} would let other machines use this server without a key",
            hint="Add --api-key KEY (or LOCALR1_API_KEY), or --insecure if the network is trusted.",
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use is a one-line error at once."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and accepted
    # sockets inherit it. Without it every keep-alive request after the first waited ~40 ms for Nagle's
    # algorithm and the client's delayed ACK (the headers and the body go out as two writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        hint = "Choose another --port, or stop the program using it." if exc.errno in (98, 48) else None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint=hint) from None
    sock.listen(BACKLOG)
    return sock


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful stop on SIGINT/SIGTERM the process exits normally
        (uvicorn re-raises the signal, which ends the process with 130/143 before localr1 frees the model)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def uvicorn_config(app: Any, limits: ConnectionLimits, *, drain_s: float = DRAIN_S) -> Any:
    """uvicorn's settings for the app: HTTP/1.1 through the guarded protocol (server/connections.py)."""
    import uvicorn

    from localr1.server.guarded_protocol import protocol_class

    return uvicorn.Config(
        app,
        http=protocol_class(limits),
        backlog=BACKLOG,
        log_level="warning",
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=drain_s,
        lifespan="off",
        ws="none",
    )


def serve(
    app: Any,
    sock: socket.socket,
    *,
    limits: ConnectionLimits | None = None,
    drain_s: float = DRAIN_S,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM; requests in flight then get ``drain_s`` seconds to finish."""
    _Server = _server_class()
    server = _Server(uvicorn_config(app, limits or ConnectionLimits(), drain_s=drain_s))
    if on_started is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            on_started()

        server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
