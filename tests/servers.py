"""A real ``localr1 serve`` app on 127.0.0.1 (uvicorn in a thread, a free port) for the server tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from localr1.server.app import build_app
from localr1.server.connections import ConnectionLimits
from localr1.server.run import bind_socket, uvicorn_config
from localr1.server.service import Service
from localr1.server.settings import Settings


class RunningServer:
    def __init__(self, service: Service, settings: Settings, limits: ConnectionLimits | None = None) -> None:
        import uvicorn

        self.service = service
        self.lines: list[str] = []
        settings = Settings(**{**settings.__dict__, "log": self.lines.append})
        self.app = build_app(service, settings)
        self.sock = bind_socket("127.0.0.1", 0)  # the socket and the uvicorn settings `localr1 serve` uses
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(self.app, limits or ConnectionLimits(), drain_s=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def log_lines(self, count: int, since: int = 0, timeout: float = 10) -> list[str]:
        """The access log from line ``since`` once it holds ``count`` lines (or the deadline passes).

        The server writes a request's line after its response has ended, so a client can read the whole
        response a moment before the line exists: wait for it rather than race it."""
        deadline = time.monotonic() + timeout
        while len(self.lines) - since < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # a line more than expected would show up here
        return self.lines[since:]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextlib.contextmanager
def running(
    engine, name: str = "tiny-r1", *, queue: int = 8, limits: ConnectionLimits | None = None, **settings
) -> Iterator[RunningServer]:
    server = RunningServer(Service(engine, name, queue=queue), Settings(**settings), limits).start()
    try:
        yield server
    finally:
        server.stop()
