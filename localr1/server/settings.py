"""What the app is told at start: the key, the origins web pages may come from, the log, the body limit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from localr1.server import protocol


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    json_logs: bool = False
    max_body: int = protocol.MAX_BODY_BYTES
    log: Callable[[str], None] = print
    local_only: bool = True  # bound to loopback: only loopback names in Host (no DNS rebinding)
