"""An engine that is a running ``localr1 serve``: ``ask --server URL`` and ``chat --server URL``.

The prompt is built here, with the server's own chat template and special tokens (``/api/show``), by the
same ``prompt.render`` as a local model, and sent as text to ``/v1/completions``; the server streams the
reasoning and the answer apart (``reasoning_format: separate``) with the usage and timings at the end.
So the front ends get exactly the events a local engine gives. Standard library HTTP only.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import math
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, get_args

from localr1 import limits
from localr1.engine.base import ModelInfo
from localr1.errors import ContextOverflowError, EngineError, UsageError
from localr1.events import Answer, Done, Event, FinishReason, Reasoning, Timings, Usage
from localr1.printable import printable
from localr1.text.prompt import ChatFormat, Prompt
from localr1.text.sampling import Sampling
from localr1.text.thinking import ThinkingReport

# What a peer may cost this client. It may be any program on that port (a mistyped --server), or hostile:
# every wait has a deadline, every read a bound, every field a type check, and its text is printed safe.
DEFAULT_TIMEOUT_S = 10.0  # connecting, and each short exchange (/health, /api/show, /tokenize), whole
READ_TIMEOUT_S = 600.0  # a long prompt behind a queue of others can take minutes before its first token
MAX_REPLY_BYTES = 16 << 20  # a JSON reply (/api/show holds the chat template: a few KiB)
MAX_LINE_BYTES = 4 << 20  # one line of the event stream (a chunk of text handed at once)


def server_timeout() -> float:
    """LOCALR1_SERVER_TIMEOUT (seconds), else the default: how long a server may take to accept and answer."""
    return limits.seconds_from_env("LOCALR1_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S, 0.1, 3600)


def server_url(value: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, base path) of a server address such as ``127.0.0.1:11435`` or ``http://host/``."""
    if "://" not in value:
        value = "http://" + value
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"--server {value!r} is not an http:// address", hint="For example http://127.0.0.1:11435")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--server {value!r} has no valid port") from None
    return parsed.scheme, parsed.hostname, port, parsed.path.rstrip("/")


def summary(raw: bytes, status: int) -> str:
    """A peer's error body as one printable line: a JSON error's message, else its text with HTML stripped."""
    try:
        error = json.loads(raw).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message.strip():
            return printable(message.strip(), limit=200)
    except (ValueError, RecursionError, AttributeError):
        pass
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", text)
    title = re.search(r"(?is)<title>(.*?)</title>", raw.decode("utf-8", "replace"))
    text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    text = " ".join(text.split()) or (html.unescape(title.group(1)).strip() if title else "")
    return printable(text, limit=160) or f"HTTP {status}"


class _Fields:
    """Reads a peer's JSON object field by field: a wrong type is one line naming the field, never a crash."""

    def __init__(self, value: Any, where: str, url: str) -> None:
        self.url, self.where = url, where
        if not isinstance(value, dict):
            raise self.wrong(where)
        self.value = value

    def wrong(self, field: str) -> EngineError:
        return EngineError(
            f"{self.url} did not answer like a localr1 server ({field} is missing or of the wrong type)",
            hint="Check --server: it must be the address of `localr1 serve`.",
        )

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.value.get(name)
        if value is None:  # absent, or JSON's null
            return default
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise self.wrong(f"{self.where}.{name}")
        if not isinstance(value, kinds):
            raise self.wrong(f"{self.where}.{name}")
        return value

    def obj(self, name: str) -> _Fields:
        return _Fields(self.get(name, dict, {}), f"{self.where}.{name}", self.url)

    def count(self, name: str) -> int:
        value = self.get(name, int, 0)
        if value < 0:
            raise self.wrong(f"{self.where}.{name}")
        return value

    def seconds(self, name: str) -> float:
        value = float(self.get(name, (int, float), 0.0))
        if not math.isfinite(value) or value < 0:
            raise self.wrong(f"{self.where}.{name}")
        return value


class RemoteEngine:
    """The ``Engine`` interface over HTTP to ``localr1 serve``."""

    def __init__(self, url: str, *, api_key: str | None = None) -> None:
        self.url = url
        self._scheme, self._host, self._port, self._base = server_url(url)
        self._key = api_key if api_key is not None else os.environ.get("LOCALR1_API_KEY")
        self._timeout = server_timeout()
        self._check_peer()
        show = _Fields(self._json("POST", "/api/show", {}), "/api/show", url)
        details, meta = show.obj("details"), show.obj("model_info")
        capabilities = show.get("capabilities", list, [])
        reasoning = meta.get("localr1.text.reasoning", bool, "thinking" in capabilities)
        fmt = ChatFormat(
            template=show.get("template", str, ""),
            source=printable(str(meta.get("localr1.template_source", str, "server"))),
            bos_token=meta.get("localr1.bos_token", str, ""),
            eos_token=meta.get("localr1.eos_token", str, ""),
            reasoning=reasoning,
            add_bos=meta.get("localr1.add_bos", bool, False),
        )
        architecture = printable(meta.get("general.architecture", str, None) or details.get("family", str, "?"))
        models = _Fields(self._json("GET", "/v1/models", None), "/v1/models", url)
        data = models.get("data", list, [])
        if not data:
            raise models.wrong("/v1/models.data")
        name = _Fields(data[0], "/v1/models.data[0]", url).get("id", str, "")
        if not name:
            raise models.wrong("/v1/models.data[0].id")
        self.info = ModelInfo(
            name=printable(name, limit=200),
            path=None,
            architecture=architecture,
            quant=printable(details.get("quantization_level", str, "?")),
            n_ctx=meta.count("localr1.context_per_request"),
            n_ctx_train=meta.count(f"{architecture}.context_length"),
            chat_format=fmt,
            extra={"server": url},
        )

    def _check_peer(self) -> None:
        """Whether a localr1 server answers there, by its /health (open without the key): anything else is
        one line saying what answered, before any request is sent."""
        conn, response = self._request("GET", "/health", None, deadline_s=self._timeout, check_status=False)
        try:
            raw = self._read(response, MAX_REPLY_BYTES, "/health")
        finally:
            conn.close()
        try:
            health = json.loads(raw)
        except (ValueError, RecursionError):
            health = None
        if (
            response.status == 200
            and isinstance(health, dict)
            and health.get("status") == "ok"
            and isinstance(health.get("slots"), int)
            and "context_per_request" in health
        ):
            return
        what = (
            f"answered {response.status} ({summary(raw, response.status)})"
            if response.status != 200
            else ("answered, but not as localr1 does")
        )
        raise EngineError(
            f"{self.url} is not a localr1 server: GET /health {what}",
            hint="Check --server: it must be the address of `localr1 serve` (default port 11435).",
        )

    # --- HTTP ------------------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout)

    def _request(
        self, method: str, path: str, body: dict | None, *, deadline_s: float, check_status: bool = True
    ) -> tuple[http.client.HTTPConnection, Any]:
        """Send a request; the connection and the response once its headers came, within ``deadline_s`` in all
        (a peer that accepts and then stays silent, or sends its headers a byte at a time, is cut off then)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        conn = self._connect()
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(deadline_s, cut)
        timer.daemon = True
        timer.start()
        try:
            conn.request(method, self._base + path, body=data, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(min(deadline_s, READ_TIMEOUT_S))
            response = conn.getresponse()  # (http.client bounds the headers: 100 lines of up to 64 KiB)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise self._unreachable(exc, expired.is_set(), deadline_s) from None
        finally:
            timer.cancel()
        if check_status and response.status >= 400:
            try:
                raw = self._read(response, 1 << 16, path, partial=True)
            finally:
                conn.close()
            raise self._error(response.status, raw)
        return conn, response

    def _unreachable(self, exc: BaseException, expired: bool, deadline_s: float) -> EngineError:
        hint = "Start one with `localr1 serve`, or check --server / LOCALR1_SERVER."
        if expired or isinstance(exc, TimeoutError):
            return EngineError(
                f"{self.url} did not answer within {deadline_s:g} s",
                hint="Check --server; a slow server can be given longer with LOCALR1_SERVER_TIMEOUT=SECONDS.",
            )
        if isinstance(exc, ConnectionRefusedError):
            return EngineError(f"cannot reach the localr1 server at {self.url}: nothing is listening there", hint=hint)
        if isinstance(exc, http.client.BadStatusLine | http.client.LineTooLong | http.client.HTTPException):
            https = " (if it is an HTTPS server, write https://)" if self._scheme == "http" else ""
            return EngineError(
                f"{self.url} did not answer in HTTP{https}",
                hint="Check --server: it must be the address of `localr1 serve` (default port 11435).",
            )
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        return EngineError(f"cannot reach the localr1 server at {self.url}: {printable(str(reason))}", hint=hint)

    def _read(self, response: Any, limit: int, path: str, *, partial: bool = False) -> bytes:
        """The body, at most ``limit`` bytes (more is an error, or with ``partial`` the first ``limit``)."""
        try:
            raw = response.read(limit + 1)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._unreachable(exc, False, self._timeout) from None
        if len(raw) > limit and not partial:
            raise EngineError(f"{self.url} answered {path} with more than {limit >> 20} MiB", hint="Check --server.")
        return raw[:limit]

    def _error(self, status: int, raw: bytes) -> EngineError:
        message, code = summary(raw, status), None
        with contextlib.suppress(ValueError, RecursionError, AttributeError):
            error = json.loads(raw).get("error")
            code = error.get("code") if isinstance(error, dict) else None
        if status == 401:
            return EngineError(f"the server refused: {message}", hint="Pass its key in LOCALR1_API_KEY.")
        if code == "context_length_exceeded":
            return ContextOverflowError(f"the server refused: {message}", hint="Shorten the conversation.")
        if status == 503:
            return EngineError(f"the server is busy: {message}", hint="Try again in a moment.")
        return EngineError(f"the server answered {status}: {message}")

    def _json(self, method: str, path: str, body: dict | None) -> Any:
        """A short exchange's JSON reply, whole within the deadline."""
        conn, response = self._request(method, path, body, deadline_s=self._timeout)
        try:
            raw = self._read(response, MAX_REPLY_BYTES, path)
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise EngineError(f"{self.url} did not answer like a localr1 server", hint="Check --server.") from None

    # --- the Engine interface --------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        reply = _Fields(
            self._json("POST", "/tokenize", {"content": text, "add_special": add_bos}), "/tokenize", self.url
        )
        tokens = reply.get("tokens", list, None)
        if tokens is None or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise reply.wrong("/tokenize.tokens")
        return tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, add_bos=False))

    def end_tokens(self) -> list[int]:
        return []

    def reset(self) -> None:
        """Nothing to do: the server keeps each slot's cache and reuses the longest matching prefix."""

    def close(self, timeout: float = 0.0) -> None:
        """Nothing to free here: the model stays loaded in the server."""

    def stream(self, prompt: Prompt, sampling: Sampling, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        sampling.validate()
        if sampling.grammar:
            raise UsageError("grammars are not sent to a server", hint="Run without --server.")
        body: dict[str, Any] = {
            "prompt": prompt.text,
            "stream": True,
            "stream_options": {"include_usage": True},
            "reasoning_format": "separate",
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.max_tokens is not None:
            body["max_tokens"] = sampling.max_tokens
        if sampling.logit_bias:
            body["logit_bias"] = {str(t): max(b, -100.0) for t, b in sampling.logit_bias.items()}
        if sampling.think_budget is not None:
            body["thinking_budget"] = sampling.think_budget
        if sampling.think_min is not None:
            body["thinking_min"] = sampling.think_min
        # the first event comes after the wait in line and the prompt: minutes, for a long one behind others
        conn, response = self._request("POST", "/v1/completions", body, deadline_s=READ_TIMEOUT_S)
        if conn.sock is not None:
            conn.sock.settimeout(READ_TIMEOUT_S)
        return self._events(conn, response, cancel)

    def _events(self, conn: Any, response: Any, cancel: threading.Event | None) -> Iterator[Event]:
        finish, usage, timings, unfinished, thinking = "stop", Usage(), Timings(), False, None
        try:
            while True:
                raw = response.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                if len(raw) > MAX_LINE_BYTES:
                    raise EngineError(f"{self.url} sent an event longer than {MAX_LINE_BYTES >> 20} MiB")
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"  # closing the connection stops the generation on the server
                    break
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                try:
                    chunk = _Fields(json.loads(data), "event", self.url)
                except (ValueError, RecursionError):
                    raise EngineError(f"{self.url} sent an event that is not JSON", hint="Check --server.") from None
                if "error" in chunk.value:
                    error = chunk.value["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    raise EngineError(f"the server failed: {printable(str(message), limit=200)}")
                if chunk.value.get("usage"):
                    u = chunk.obj("usage")
                    details = u.obj("completion_tokens_details")
                    usage = Usage(
                        u.count("prompt_tokens"), u.count("completion_tokens"), details.count("reasoning_tokens")
                    )
                unfinished = chunk.get("reasoning_unfinished", bool, unfinished)
                if chunk.value.get("thinking_budget") is not None:
                    thinking = _thinking_report(chunk.get("thinking_budget", dict, {}))
                if chunk.value.get("timings"):
                    t = chunk.obj("timings")
                    timings = Timings(
                        load_s=t.seconds("load_s"),
                        prefill_s=t.seconds("prefill_s"),
                        decode_s=t.seconds("decode_s"),
                        thinking_s=t.seconds("thinking_s"),
                    )
                for i, item in enumerate(chunk.get("choices", list, [])):
                    choice = _Fields(item, f"event.choices[{i}]", self.url)
                    if reasoning := choice.get("reasoning_content", str, ""):
                        yield Reasoning(printable(reasoning, lines=True), 1)
                    if text := choice.get("text", str, ""):
                        yield Answer(printable(text, lines=True), 1)
                    if reason := choice.get("finish_reason", str, ""):
                        finish = reason if reason in _FINISH_REASONS else "stop"
        except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
            raise EngineError(
                f"the connection to {self.url} broke: {printable(str(exc), limit=120)}",
                hint="Is the server still running?",
            ) from None
        finally:
            conn.close()
        timings = replace(timings, prompt_tokens=usage.prompt_tokens, decode_tokens=usage.completion_tokens)
        yield Done(finish, usage, timings, reasoning_unfinished=unfinished, thinking=thinking)  # type: ignore[arg-type]


_FINISH_REASONS = get_args(FinishReason)


def _thinking_report(d: dict):
    """The server's ``thinking_budget`` object back as a ThinkingReport (what the budget did)."""

    def count(key: str) -> int:
        value = d.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    budget, minimum = d.get("budget"), d.get("min")
    return ThinkingReport(
        budget if isinstance(budget, int) else None,
        minimum if isinstance(minimum, int) else None,
        count("model_tokens"),
        bool(d.get("cut")),
        count("waits"),
        count("forced_tokens"),
    )
