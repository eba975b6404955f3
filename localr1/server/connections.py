"""What a connection may cost the server before it has sent a whole request: a deadline and a cap.

uvicorn reads a request's headers and body with no deadline and accepts connections without a limit, so a
client that sends its headers a byte a second, a body shorter than its Content-Length, or a few hundred
connections that never finish a request held the server's file descriptors until authenticated clients
could not connect. This is uvicorn's own HTTP protocol with two rules, applied before the app (and so
before the API key) sees anything:

- **A deadline for each request.** From the moment a connection opens (or its previous response ends) the
  client has ``request_timeout_s`` to send the whole request, headers and body; then it gets 408 (or,
  when it sent nothing, the connection is just closed, as idle keep-alive connections are). The time the app takes to answer is not counted (a generation may take minutes).
- **A cap on connections.** At most ``max_connections`` are open at once. One more displaces the one that
  has waited longest without starting a request (an idle keep-alive or a stalled client); when every
  connection is busy with a request the new one gets 503 and is closed.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from localr1.errors import UsageError

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# The listening socket's queue. asyncio also takes it as how many connections to accept at once before any is
# handed to the protocol (which closes those beyond the cap), so that many descriptors are kept in hand beside
# the cap's; uvicorn's own default, 2048, let a burst of connections run the process out of them.
BACKLOG = 128
SPARE_FDS = 16  # files opened later (the log, a model's header)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.max_connections <= 65536:
            raise UsageError(f"--max-connections must be from 1 to 65,536, not {self.max_connections:,}")
        if not 0.1 <= self.request_timeout_s <= 3600:
            raise UsageError(f"--request-timeout must be from 0.1 to 3600 seconds, not {self.request_timeout_s:g}")


def open_files_allowed() -> int:
    """Raise this process's soft limit on open files to its hard limit (as servers do), and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def open_files_now() -> int:
    try:
        return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))
    except OSError:
        return 64


def fit_to_open_files(limits: ConnectionLimits) -> tuple[ConnectionLimits, str | None]:
    """The limits with the connection cap lowered below what the process may open, and a note if it was."""
    allowed = open_files_allowed()
    room = allowed - open_files_now() - BACKLOG - SPARE_FDS
    if limits.max_connections <= room:
        return limits, None
    fitted = ConnectionLimits(max(room, 1), limits.request_timeout_s)
    note = (
        f"at most {fitted.max_connections} connections: this process may open {allowed} files "
        "(raise `ulimit -n` for more)"
    )
    return fitted, note
