"""The Starlette application: OpenAI routes under /v1, Ollama routes under /api, and the guards around them.

Guards, outermost first: one log line per request, the API key (compared in constant time), CORS only for
the origins given, and in each route a bounded body, checked JSON and a ``model`` that names the served
model. Every refusal is a JSON error in the caller's API's shape (OpenAI: ``{"error": {...}}``, Ollama:
``{"error": "..."}``) with the right status; nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from localr1 import __version__
from localr1.errors import ContextOverflowError, LocalR1Error, TemplateError, UsageError
from localr1.events import Answer, Done, Event, Reasoning
from localr1.printable import printable
from localr1.server import protocol
from localr1.server.protocol import Generation, RequestError
from localr1.server.service import Busy, Service

RETRY_AFTER_S = 2
OLLAMA_VERSION = "0.12.0"  # the Ollama API version these routes follow (clients compare against it)


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    json_logs: bool = False
    max_body: int = protocol.MAX_BODY_BYTES
    log: Callable[[str], None] = print
    local_only: bool = True  # bound to loopback: only loopback names in Host (no DNS rebinding)


def _is_ollama(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error_response(request: Request, exc: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    if _is_ollama(request):
        body: dict[str, Any] = {"error": exc.message}
    else:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
            exc.status, "invalid_request_error" if exc.status < 500 else "server_error"
        )
        body = {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


def request_error(exc: LocalR1Error) -> RequestError:
    """What the client hears of an engine's error: its own fault (400) or the server's (500)."""
    if isinstance(exc, ContextOverflowError):
        return RequestError(exc.message, code="context_length_exceeded")
    if isinstance(exc, UsageError):  # a value the engine refused (a grammar that does not parse, or has no way on)
        return RequestError(exc.message)
    return RequestError(exc.message, status=500)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, reading at most ``limit`` bytes (413 beyond)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestError(f"the body is larger than {limit >> 20} MiB", status=413)
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the body is larger than {limit >> 20} MiB", status=413)
        chunks.append(chunk)
    return protocol.parse_json(b"".join(chunks))


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _first_or_gone(request: Request, events: AsyncIterator[Event]) -> Event | None:
    """The first event (after waiting in line and the prompt), or None if the client left meanwhile."""
    first = asyncio.ensure_future(events.__anext__())
    gone = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait({first, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if first in done:
        return first.result()
    first.cancel()
    with contextlib.suppress(BaseException):
        await first
    await events.aclose()
    return None


class _Run:
    """One generation's text, collected as it streams, for the final response and the log line."""

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.done: Done | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Reasoning):
            self.reasoning.append(event.text)
        elif isinstance(event, Answer):
            self.answer.append(event.text)
        elif isinstance(event, Done):
            self.done = event


def _inline(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.lstrip()}" if reasoning else answer


def _finish_reason(done: Done | None) -> str:
    return "length" if done is not None and done.finish_reason == "length" else "stop"


def _usage(done: Done | None) -> dict[str, Any]:
    u = done.usage if done else None
    prompt, completion, reasoning = (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens) if u else (0, 0, 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _timings(done: Done | None) -> dict[str, Any]:
    return done.to_dict()["timings"] if done else {}


def build_app(service: Service, settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    key = settings.api_key.encode() if settings.api_key else None

    def busy_response(request: Request) -> Response:
        error = RequestError(
            f"the server is busy: {service.slots} generating and {service.admission.queue} waiting",
            status=503,
            code="server_busy",
        )
        return error_response(request, error, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def start(request: Request, gen: Generation) -> tuple[AsyncIterator[Event], Event] | Response | None:
        """Check the model, build the prompt and wait for the first event; an error response, or None if the
        client left while waiting."""
        service.check_model(gen.model)
        try:
            prompt = service.prompt(gen)
        except TemplateError as exc:
            raise RequestError(f"the model's chat template failed: {exc.message}", status=500) from None
        events = service.generate(gen, prompt)
        try:
            first = await _first_or_gone(request, events)
        except Busy:
            await events.aclose()
            return busy_response(request)
        except LocalR1Error as exc:
            raise request_error(exc) from None
        if first is None:  # the client left while waiting
            return None
        return events, first

    def note(request: Request, run: _Run) -> None:
        if run.done is not None:
            request.scope.setdefault("state", {})["localr1_done"] = run.done

    async def collect(request: Request, events: AsyncIterator[Event], first: Event) -> _Run:
        """A non-streaming reply: every event, unless the client leaves first (then the generation stops)."""
        run = _Run()
        run.add(first)
        try:
            async for event in _until_gone(request, events):
                run.add(event)
        except LocalR1Error as exc:  # the generation failed after its first event (a grammar with no way on)
            raise request_error(exc) from None
        note(request, run)
        return run

    # --- OpenAI -----------------------------------------------------------------------------------------
    async def openai_generate(request: Request, chat: bool) -> Response:
        body = await read_json(request, settings.max_body)
        gen = protocol.openai_chat(body) if chat else protocol.openai_completion(body)
        started = await start(request, gen)
        if not isinstance(started, tuple):
            return started or Response(status_code=499)
        events, first = started
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        run = _Run()
        common = {
            "id": ident,
            "created": created,
            "model": service.name,
            "system_fingerprint": f"localr1-{__version__}",
        }
        if not gen.stream:
            run = await collect(request, events, first)
            reasoning, answer = "".join(run.reasoning), "".join(run.answer)
            if gen.reasoning == "inline":
                content, reasoning_content = _inline(reasoning, answer), None
            elif gen.reasoning == "hidden":
                content, reasoning_content = answer, None
            else:
                content, reasoning_content = answer, reasoning
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if reasoning_content is not None:
                    message["reasoning_content"] = reasoning_content
                choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": _finish_reason(run.done)}
            else:
                choice = {"index": 0, "text": content, "finish_reason": _finish_reason(run.done), "logprobs": None}
                if reasoning_content is not None:
                    choice["reasoning_content"] = reasoning_content
            obj = "chat.completion" if chat else "text_completion"
            payload = {**common, "object": obj, "choices": [choice], "usage": _usage(run.done)}
            payload["timings"] = _timings(run.done)
            if run.done is not None and run.done.thinking is not None:  # localr1's: what the budget did
                payload["thinking_budget"] = run.done.thinking.to_dict()
            return JSONResponse(payload)

        async def sse() -> AsyncIterator[bytes]:
            obj = "chat.completion.chunk" if chat else "text_completion"
            inline_open = False

            def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
                if chat:
                    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": (delta or {}).get("content", ""), "finish_reason": finish}
                    if "reasoning_content" in (delta or {}):
                        choice["reasoning_content"] = delta["reasoning_content"]
                    choice["logprobs"] = None
                data = {**common, "object": obj, "choices": [choice], **extra}
                return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

            try:
                if chat:
                    yield chunk({"role": "assistant", "content": ""})
                event: Event | None = first
                pending = [first]
                while True:
                    for event in pending:
                        run.add(event)
                        if isinstance(event, Reasoning) and gen.reasoning == "separate":
                            yield chunk({"reasoning_content": event.text})
                        elif isinstance(event, Reasoning) and gen.reasoning == "inline":
                            text = event.text if inline_open else "<think>\n" + event.text.lstrip("\n")
                            inline_open = True
                            yield chunk({"content": text})
                        elif isinstance(event, Answer):
                            text = event.text
                            if inline_open:
                                text, inline_open = "\n</think>\n\n" + text.lstrip(), False
                            yield chunk({"content": text})
                    if isinstance(event, Done):
                        break
                    try:
                        pending = [await events.__anext__()]
                    except StopAsyncIteration:
                        break
                note(request, run)
                extra = {
                    "timings": _timings(run.done),
                    "reasoning_unfinished": bool(run.done and run.done.reasoning_unfinished),
                }
                if run.done is not None and run.done.thinking is not None:
                    extra["thinking_budget"] = run.done.thinking.to_dict()
                if inline_open:
                    yield chunk({"content": "\n</think>\n\n"})
                yield chunk({}, _finish_reason(run.done), **extra)
                if gen.include_usage:
                    data = {**common, "object": obj, "choices": [], "usage": _usage(run.done)}
                    yield b"data: " + json.dumps(data).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            except LocalR1Error as exc:  # after the headers went out: an error event ends the stream
                error = {"error": {"message": exc.message, "type": "server_error", "param": None, "code": None}}
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
            finally:
                await events.aclose()

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def chat_completions(request: Request) -> Response:
        return await openai_generate(request, chat=True)

    async def completions(request: Request) -> Response:
        return await openai_generate(request, chat=False)

    def model_time() -> float:
        """When the model file was written (OpenAI's "created", Ollama's "modified_at")."""
        path = service.info.path
        try:
            return path.stat().st_mtime if path is not None else time.time()
        except OSError:
            return time.time()

    def model_card() -> dict[str, Any]:
        return {"id": service.name, "object": "model", "created": int(model_time()), "owned_by": "localr1"}

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request) -> Response:
        service.check_model(request.path_params["model"])
        return JSONResponse(model_card())

    # --- Ollama -----------------------------------------------------------------------------------------
    async def ollama_generate(request: Request, chat: bool) -> Response:
        body = await read_json(request, settings.max_body)
        gen = (
            protocol.ollama_chat(body, service.n_ctx_slot)
            if chat
            else protocol.ollama_generate(body, service.n_ctx_slot)
        )
        if gen.load_only:  # a preload: the model is loaded already (Ollama answers one object, streaming or not)
            service.check_model(gen.model)
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            loaded: dict[str, Any] = {"model": gen.model or service.name, "created_at": now}
            loaded.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            return JSONResponse({**loaded, "done": True, "done_reason": "load"})
        started = await start(request, gen)
        if not isinstance(started, tuple):
            return started or Response(status_code=499)
        events, first = started
        run = _Run()
        model = gen.model if gen.model else service.name

        def piece(thinking: str, content: str, done: bool = False) -> dict[str, Any]:
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            out: dict[str, Any] = {"model": model, "created_at": now}
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if thinking:
                    message["thinking"] = thinking
                out["message"] = message
            else:
                out["response"] = content
                if thinking:
                    out["thinking"] = thinking
            out["done"] = done
            return out

        def final(out: dict[str, Any]) -> dict[str, Any]:
            d = run.done
            t = d.timings if d else None
            ns = 1_000_000_000
            out.update(
                done_reason=_finish_reason(d),
                total_duration=int(((t.prefill_s + t.decode_s) if t else 0) * ns),
                load_duration=int((t.load_s if t else 0) * ns),
                prompt_eval_count=d.usage.prompt_tokens if d else 0,
                prompt_eval_duration=int((t.prefill_s if t else 0) * ns),
                eval_count=d.usage.completion_tokens if d else 0,
                eval_duration=int((t.decode_s if t else 0) * ns),
            )
            return out

        def split(event: Event) -> tuple[str, str]:
            if isinstance(event, Reasoning):
                return (event.text, "") if gen.reasoning == "separate" else ("", "")
            if isinstance(event, Answer):
                return "", event.text
            return "", ""

        if not gen.stream:
            run = await collect(request, events, first)
            thinking = "".join(run.reasoning) if gen.reasoning == "separate" else ""
            return JSONResponse(final(piece(thinking, "".join(run.answer), done=True)))

        async def ndjson() -> AsyncIterator[bytes]:
            try:
                event: Event = first
                while True:
                    run.add(event)
                    thinking, content = split(event)
                    if thinking or content:
                        yield json.dumps(piece(thinking, content), ensure_ascii=False).encode() + b"\n"
                    if isinstance(event, Done):
                        break
                    try:
                        event = await events.__anext__()
                    except StopAsyncIteration:
                        break
                note(request, run)
                yield json.dumps(final(piece("", "", done=True))).encode() + b"\n"
            except LocalR1Error as exc:
                yield json.dumps({"error": exc.message}).encode() + b"\n"
            finally:
                await events.aclose()

        return StreamingResponse(ndjson(), media_type="application/x-ndjson")

    async def api_chat(request: Request) -> Response:
        return await ollama_generate(request, chat=True)

    async def api_generate(request: Request) -> Response:
        return await ollama_generate(request, chat=False)

    def details() -> dict[str, Any]:
        info = service.info
        return {
            "format": "gguf",
            "family": info.architecture,
            "families": [info.architecture],
            "parameter_size": "",
            "quantization_level": info.quant,
        }

    def modified() -> str:
        return datetime.fromtimestamp(model_time(), UTC).isoformat().replace("+00:00", "Z")

    async def api_tags(request: Request) -> Response:
        size = int(service.info.extra.get("file_size", 0) or 0)
        entry = {
            "name": service.name,
            "model": service.name,
            "modified_at": modified(),
            "size": size,
            "digest": "",
            "details": details(),
        }
        return JSONResponse({"models": [entry]})

    async def api_show(request: Request) -> Response:
        body = await read_json(request, settings.max_body)
        name = body.get("model", body.get("name"))
        if name is not None and not isinstance(name, str):
            raise RequestError("'model' must be a string", param="model")
        service.check_model(name)
        info, fmt = service.info, service.info.chat_format
        return JSONResponse(
            {
                "modelfile": f"# served by localr1 {__version__}\nFROM {info.path or service.name}\n",
                "parameters": "temperature 0.6\ntop_p 0.95",
                "template": fmt.template,
                "details": details(),
                "model_info": {
                    "general.architecture": info.architecture,
                    f"{info.architecture}.context_length": info.n_ctx_train,
                    # what `localr1 ask --server` needs to build prompts exactly as the server does
                    "localr1.context_per_request": service.n_ctx_slot,
                    "localr1.bos_token": fmt.bos_token,
                    "localr1.eos_token": fmt.eos_token,
                    "localr1.add_bos": fmt.add_bos,
                    "localr1.reasoning": fmt.reasoning,
                    "localr1.template_source": fmt.source,
                    "localr1.quant": info.quant,
                },
                "capabilities": ["completion", "thinking"] if fmt.reasoning else ["completion"],
                "modified_at": modified(),
            }
        )

    async def api_version(request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION, "localr1": __version__})

    async def api_ps(request: Request) -> Response:
        size = int(service.info.extra.get("file_size", 0) or 0)
        return JSONResponse(
            {"models": [{"name": service.name, "model": service.name, "size": size, "details": details()}]}
        )

    async def tokenize(request: Request) -> Response:
        """llama-server's /tokenize: the token ids of ``content`` (``ask --server`` counts with it)."""
        body = await read_json(request, settings.max_body)
        content = body.get("content")
        if not isinstance(content, str):
            raise RequestError("'content' must be a string", param="content")
        add_special = body.get("add_special", False)
        if not isinstance(add_special, bool):
            raise RequestError("'add_special' must be true or false", param="add_special")
        try:
            tokens = await service.tokenize(content, add_bos=add_special)
        except Busy:
            return busy_response(request)
        return JSONResponse({"tokens": tokens})

    # --- the rest ---------------------------------------------------------------------------------------
    async def root(request: Request) -> Response:
        return PlainTextResponse("localr1 is running")

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": service.name,
                "slots": service.slots,
                "generating": min(service.admission.inside, service.slots),
                "waiting": service.admission.waiting,
                "context_per_request": service.n_ctx_slot,
            }
        )

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/api/chat", api_chat, methods=["POST"]),
        Route("/api/generate", api_generate, methods=["POST"]),
        Route("/api/tags", api_tags, methods=["GET"]),
        Route("/api/show", api_show, methods=["POST"]),
        Route("/api/version", api_version, methods=["GET"]),
        Route("/api/ps", api_ps, methods=["GET"]),
    ]

    async def on_request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return error_response(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        from starlette.exceptions import HTTPException

        assert isinstance(exc, HTTPException)
        return error_response(request, RequestError(str(exc.detail), status=exc.status_code))

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(request, RequestError(f"internal error: {type(exc).__name__}: {exc}", status=500))

    from starlette.exceptions import HTTPException

    app = Starlette(
        routes=routes,
        exception_handlers={RequestError: on_request_error, HTTPException: on_http_error, Exception: on_crash},
    )
    if settings.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_KeyCheck, key=key)
    app.add_middleware(_SameMachine, settings=settings)
    app.add_middleware(_AccessLog, settings=settings)
    return app


async def _until_gone(request: Request, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The rest of the events, stopping (and cancelling the generation) if the client disconnects."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            nxt = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
                return
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return
    finally:
        gone.cancel()
        await events.aclose()


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
    import ipaddress
    import socket

    name = _host_name(host)
    if name in ("localhost", socket.gethostname().lower()) or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
