"""The guards around every route, outermost first: one log line per request, what a web page could send
(foreign Origins, and Host names that are not this machine's on a loopback server), and the API key."""

from __future__ import annotations

import hmac
import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from localr1.events import Done
from localr1.printable import printable
from localr1.server.exchange import error_response
from localr1.server.protocol import RequestError
from localr1.server.run import is_loopback_address
from localr1.server.settings import Settings

_OPEN_PATHS = {"/", "/health"}


class _KeyCheck:
    """Every route but / and /health needs ``Authorization: Bearer KEY`` when the server has a key."""

    def __init__(self, app: Any, key: bytes | None) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in _OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if hmac.compare_digest(token, self.key):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        error = RequestError("missing or wrong API key", status=401, code="invalid_api_key")
        response = error_response(request, error, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


# Pages of desktop apps (Electron, Tauri, VS Code webviews): no website can send these origins
_APP_ORIGINS = ("app://", "tauri://", "vscode-webview://", "vscode-file://")


def _host_name(value: str) -> str:
    """The name in a Host header or an origin's authority, without the port: ``[::1]:80`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback_name(host: str) -> bool:
    """Whether a Host header names this machine: localhost, *.localhost, a loopback address, its hostname."""
    name = _host_name(host)
    return (
        name in ("localhost", socket.gethostname().lower()) or name.endswith(".localhost") or is_loopback_address(name)
    )


class _SameMachine:
    """What a web page could make a browser send is refused here, before the key and the routes.

    A cross-site page can POST ``text/plain`` without a CORS preflight, so CORS alone does not stop it from
    running generations: a request whose ``Origin`` is not the server's own, not a desktop app's and not one
    that ``--cors`` names gets 403 (and so does a cross-site request without an Origin, by
    ``Sec-Fetch-Site``). On a loopback server the ``Host`` must name this machine too, or a page on a name
    that resolves to 127.0.0.1 (DNS rebinding) could read the replies, as Ollama refuses them."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.origins = {o.lower().rstrip("/") for o in settings.cors}

    def refusal(self, headers: dict[bytes, bytes]) -> RequestError | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.settings.local_only and host and not is_loopback_name(host):
            return RequestError(
                f"requests for the host name {printable(host)!r} are refused: this server is for this "
                "machine (127.0.0.1 or localhost)",
                status=403,
                code="forbidden_host",
            )
        origin = headers.get(b"origin")
        if origin is None:
            if headers.get(b"sec-fetch-site") == b"cross-site":
                return RequestError(
                    "cross-site requests from web pages are refused", status=403, code="forbidden_origin"
                )
            return None
        text = origin.decode("latin-1").strip().lower().rstrip("/")
        if "*" in self.origins or text in self.origins or text.startswith(_APP_ORIGINS):
            return None
        if host and text in (f"http://{host.lower()}", f"https://{host.lower()}"):  # the server's own page
            return None
        shown = printable(text)
        return RequestError(
            f"requests from the web page at {shown} are refused; to allow that page, start the server "
            f"with --cors {shown}",
            status=403,
            code="forbidden_origin",
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (error := self.refusal(dict(scope.get("headers") or []))) is not None:
            await error_response(Request(scope, receive), error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _AccessLog:
    """One line per request once its response has ended: client, method, path, status, time, tokens."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._log(scope, status[0], time.perf_counter() - started)

    def _log(self, scope: dict, status: int, seconds: float) -> None:
        client = scope.get("client") or ("-", 0)
        done: Done | None = (scope.get("state") or {}).get("localr1_done")
        record: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "client": client[0],
            "method": scope["method"],
            "path": scope["path"],
            "status": status or 499,
            "seconds": round(seconds, 3),
        }
        if done is not None:
            record.update(
                prompt_tokens=done.usage.prompt_tokens,
                completion_tokens=done.usage.completion_tokens,
                reasoning_tokens=done.usage.reasoning_tokens,
                finish=done.finish_reason,
                decode_tokens_per_s=round(done.timings.decode_tps, 1),
            )
        if self.settings.json_logs:
            line = json.dumps(record)
        else:
            line = f"{record['client']} {record['method']} {record['path']} {record['status']} {seconds:.2f}s"
            if done is not None:
                line += (
                    f" prompt={done.usage.prompt_tokens} completion={done.usage.completion_tokens}"
                    f" reasoning={done.usage.reasoning_tokens} {done.timings.decode_tps:.1f} tok/s {done.finish_reason}"
                )
        self.settings.log(line)
