"""A peer on 127.0.0.1 that is not what a client expects (for the tests of what localr1 connects out to):
each connection is answered in its own thread as ``answer`` says, until ``close()``."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class Peer:
    """``answer(conn)``, or with ``http`` ``answer(conn, request)`` once the request's headers came."""

    def __init__(self, answer: Callable, *, http: bool = False) -> None:
        self.answer, self.http = answer, http
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.endpoint}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(30)
            if not self.http:
                self.answer(conn)
                return
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            self.answer(conn, request)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
