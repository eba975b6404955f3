"""One request's exchange, whichever API it came through: its body read within bounds, its generation started
and its first event awaited (or the client's leaving), the events collected, and errors in the caller's
API's shape (OpenAI: ``{"error": {...}}``, Ollama: ``{"error": "..."}``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localr1.errors import ContextOverflowError, LocalR1Error, TemplateError, UsageError
from localr1.events import Answer, Done, Reasoning, ToolCall
from localr1.server import protocol
from localr1.server.protocol import Generation, RequestError
from localr1.server.service import Busy, Served, Service

RETRY_AFTER_S = 2


def is_ollama(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error_response(request: Request, exc: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    if is_ollama(request):
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


async def disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def first_or_gone(request: Request, events: AsyncIterator[Served]) -> Served | None:
    """The first event (after waiting in line and the prompt), or None if the client left meanwhile."""
    first = asyncio.ensure_future(events.__anext__())
    gone = asyncio.ensure_future(disconnected(request))
    done, _ = await asyncio.wait({first, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if first in done:
        return first.result()
    first.cancel()
    with contextlib.suppress(BaseException):
        await first
    await events.aclose()
    return None


async def until_gone(request: Request, events: AsyncIterator[Served]) -> AsyncIterator[Served]:
    """The rest of the events, stopping (and cancelling the generation) if the client disconnects."""
    gone = asyncio.ensure_future(disconnected(request))
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


class Run:
    """One generation's text, collected as it streams, for the final response and the log line."""

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.done: Done | None = None

    def add(self, event: Served) -> None:
        if isinstance(event, Reasoning):
            self.reasoning.append(event.text)
        elif isinstance(event, Answer):
            self.answer.append(event.text)
        elif isinstance(event, ToolCall):
            self.tool_calls.append(event)
        elif isinstance(event, Done):
            self.done = event


def inline_reasoning(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.lstrip()}" if reasoning else answer


def finish_reason(done: Done | None, tool_calls: bool = False) -> str:
    if done is not None and done.finish_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def usage_json(done: Done | None) -> dict[str, Any]:
    u = done.usage if done else None
    prompt, completion, reasoning = (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens) if u else (0, 0, 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def timings_json(done: Done | None) -> dict[str, Any]:
    return done.to_dict()["timings"] if done else {}


def busy_response(request: Request) -> Response:
    service: Service = request.app.state.service
    error = RequestError(
        f"the server is busy: {service.slots} generating and {service.admission.queue} waiting",
        status=503,
        code="server_busy",
    )
    return error_response(request, error, headers={"Retry-After": str(RETRY_AFTER_S)})


async def start(request: Request, gen: Generation) -> tuple[AsyncIterator[Served], Served] | Response | None:
    """Check the model, build the prompt and wait for the first event; an error response, or None if the
    client left while waiting."""
    service: Service = request.app.state.service
    service.check_model(gen.model)
    try:
        prompt = service.prompt(gen)
    except TemplateError as exc:
        raise RequestError(f"the model's chat template failed: {exc.message}", status=500) from None
    events = service.generate(gen, prompt)
    try:
        first = await first_or_gone(request, events)
    except Busy:
        await events.aclose()
        return busy_response(request)
    except LocalR1Error as exc:
        raise request_error(exc) from None
    if first is None:  # the client left while waiting
        return None
    return events, first


def note(request: Request, run: Run) -> None:
    if run.done is not None:
        request.scope.setdefault("state", {})["localr1_done"] = run.done


async def collect(request: Request, events: AsyncIterator[Served], first: Served) -> Run:
    """A non-streaming reply: every event, unless the client leaves first (then the generation stops)."""
    run = Run()
    run.add(first)
    try:
        async for event in until_gone(request, events):
            run.add(event)
    except LocalR1Error as exc:  # the generation failed after its first event (a grammar with no way on)
        raise request_error(exc) from None
    note(request, run)
    return run


def model_time(service: Service) -> float:
    """When the model file was written (OpenAI's "created", Ollama's "modified_at")."""
    path = service.info.path
    try:
        return path.stat().st_mtime if path is not None else time.time()
    except OSError:
        return time.time()
