"""An engine that is a running ``localr1 serve``: ``ask --server URL`` and ``chat --server URL``.

The prompt is built here, with the server's own chat template and special tokens (``/api/show``), by the
same ``prompt.render`` as a local model, and sent as text to ``/v1/completions``; the server streams the
reasoning and the answer apart (``reasoning_format: separate``) with the usage and timings at the end.
So the front ends get exactly the events a local engine gives. Standard library HTTP only.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from localr1.engine.base import ModelInfo
from localr1.errors import ContextOverflowError, EngineError, UsageError
from localr1.events import Answer, Done, Event, Reasoning, Timings, Usage
from localr1.prompt import ChatFormat, Prompt
from localr1.sampling import Sampling

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # a long prompt behind a queue of others can take minutes before its first token


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


class RemoteEngine:
    """The ``Engine`` interface over HTTP to ``localr1 serve``."""

    def __init__(self, url: str, *, api_key: str | None = None) -> None:
        self.url = url
        self._scheme, self._host, self._port, self._base = server_url(url)
        self._key = api_key if api_key is not None else os.environ.get("LOCALR1_API_KEY")
        show = self._json("POST", "/api/show", {})
        details, meta = show.get("details") or {}, show.get("model_info") or {}
        reasoning = bool(meta.get("localr1.reasoning", "thinking" in (show.get("capabilities") or [])))
        fmt = ChatFormat(
            template=show.get("template") or "",
            source=str(meta.get("localr1.template_source", "server")),
            bos_token=str(meta.get("localr1.bos_token", "")),
            eos_token=str(meta.get("localr1.eos_token", "")),
            reasoning=reasoning,
            add_bos=bool(meta.get("localr1.add_bos", False)),
        )
        architecture = str(meta.get("general.architecture", details.get("family", "?")))
        name = self._json("GET", "/v1/models", None)["data"][0]["id"]
        self.info = ModelInfo(
            name=name,
            path=None,
            architecture=architecture,
            quant=str(details.get("quantization_level", "?")),
            n_ctx=int(meta.get("localr1.context_per_request", 0) or 0),
            n_ctx_train=int(meta.get(f"{architecture}.context_length", 0) or 0),
            chat_format=fmt,
            extra={"server": url},
        )

    # --- HTTP ------------------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=CONNECT_TIMEOUT_S)

    def _request(self, method: str, path: str, body: dict | None) -> tuple[http.client.HTTPConnection, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        conn = self._connect()
        try:
            conn.request(method, self._base + path, body=data, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(READ_TIMEOUT_S)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise EngineError(
                f"cannot reach the localr1 server at {self.url}: {getattr(exc, 'strerror', None) or exc}",
                hint="Start one with `localr1 serve`, or check --server / LOCALR1_SERVER.",
            ) from None
        if response.status >= 400:
            raw = response.read(1 << 16)
            conn.close()
            raise self._error(response.status, raw)
        return conn, response

    def _error(self, status: int, raw: bytes) -> EngineError:
        try:
            error = json.loads(raw).get("error")
            message = error.get("message") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
        except (ValueError, AttributeError):
            message, code = raw.decode("utf-8", "replace")[:200] or f"HTTP {status}", None
        if status == 401:
            return EngineError(f"the server refused: {message}", hint="Pass its key in LOCALR1_API_KEY.")
        if code == "context_length_exceeded":
            return ContextOverflowError(f"the server refused: {message}", hint="Shorten the conversation.")
        if status == 503:
            return EngineError(f"the server is busy: {message}", hint="Try again in a moment.")
        return EngineError(f"the server answered {status}: {message}")

    def _json(self, method: str, path: str, body: dict | None) -> dict[str, Any]:
        conn, response = self._request(method, path, body)
        try:
            return json.loads(response.read())
        except ValueError:
            raise EngineError(f"{self.url} did not answer like a localr1 server", hint="Check --server.") from None
        finally:
            conn.close()

    # --- the Engine interface --------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return list(self._json("POST", "/tokenize", {"content": text, "add_special": add_bos})["tokens"])

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
        conn, response = self._request("POST", "/v1/completions", body)
        return self._events(conn, response, cancel)

    def _events(self, conn: Any, response: Any, cancel: threading.Event | None) -> Iterator[Event]:
        finish, usage, timings, unfinished, thinking = "stop", Usage(), Timings(), False, None
        try:
            for raw in response:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"  # closing the connection stops the generation on the server
                    break
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise EngineError(f"the server failed: {chunk['error'].get('message')}")
                if chunk.get("usage"):
                    u = chunk["usage"]
                    details = u.get("completion_tokens_details") or {}
                    usage = Usage(u["prompt_tokens"], u["completion_tokens"], details.get("reasoning_tokens", 0))
                unfinished = bool(chunk.get("reasoning_unfinished", unfinished))
                if isinstance(chunk.get("thinking_budget"), dict):
                    thinking = _thinking_report(chunk["thinking_budget"])
                if chunk.get("timings"):
                    t = chunk["timings"]
                    timings = Timings(
                        load_s=t.get("load_s", 0.0),
                        prefill_s=t.get("prefill_s", 0.0),
                        decode_s=t.get("decode_s", 0.0),
                        thinking_s=t.get("thinking_s", 0.0),
                    )
                for choice in chunk.get("choices") or []:
                    if choice.get("reasoning_content"):
                        yield Reasoning(choice["reasoning_content"], 1)
                    if choice.get("text"):
                        yield Answer(choice["text"], 1)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise EngineError(
                f"the connection to {self.url} broke: {exc}", hint="Is the server still running?"
            ) from None
        finally:
            conn.close()
        timings = replace(timings, prompt_tokens=usage.prompt_tokens, decode_tokens=usage.completion_tokens)
        yield Done(finish, usage, timings, reasoning_unfinished=unfinished, thinking=thinking)  # type: ignore[arg-type]


def _thinking_report(d: dict):
    """The server's ``thinking_budget`` object back as a ThinkingReport (what the budget did)."""
    from localr1.thinking import ThinkingReport

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
