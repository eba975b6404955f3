"""The guarded HTTP protocol itself (uvicorn's h11 protocol with the rules of server/connections.py), apart
so that importing the limits does not import uvicorn."""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from localr1.server.connections import ConnectionLimits

_COMPLETE = (h11.DONE, h11.MUST_CLOSE)
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 2\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\ntoo many connections; try again"
)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the request deadline and the connection cap (server/connections.py)."""

    limits: ConnectionLimits = ConnectionLimits()
    _deadline: Any = None
    _waiting_since: float = 0.0
    _heard = False  # bytes came since the deadline was set (a request started)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self.connections.discard(self)
            transport.write(_FULL)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        super().data_received(data)
        if self.conn.their_state in _COMPLETE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # --- the rules ---------------------------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        """Open, and no request started yet (idle between requests, or headers still coming)."""
        return self._deadline is not None and self.conn.their_state is h11.IDLE

    def _arm(self) -> None:
        self._disarm()
        if self.conn.their_state in _COMPLETE:  # a pipelined request is already whole
            return
        self._waiting_since, self._heard = self.loop.time(), False
        self._deadline = self.loop.call_later(self.limits.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state in _COMPLETE:
            return
        # a request begun and not finished hears why; an idle connection is closed quietly (as servers close
        # idle keep-alive connections: a client may reuse it at that moment and would take a 408 as its answer)
        answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if self._heard and not answering and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(_TIMED_OUT)
        self._cut()

    def _cut(self) -> None:
        """Close the connection; a request whose body was still coming hears that its client left."""
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without starting a request; False if none."""
        idle = [c for c in self.connections if c is not self and getattr(c, "waiting", False)]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._waiting_since)
        oldest._cut()
        self.connections.discard(oldest)
        return True


def protocol_class(limits: ConnectionLimits) -> type:
    """The protocol with these limits (for uvicorn.Config.http)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})
