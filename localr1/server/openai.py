"""The OpenAI routes under /v1 (and llama-server's /health and /tokenize): events rendered as SSE or JSON."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from localr1 import __version__
from localr1.errors import LocalR1Error
from localr1.events import Answer, Done, Reasoning, ToolCall
from localr1.server import protocol
from localr1.server.exchange import (
    Run,
    busy_response,
    collect,
    finish_reason,
    inline_reasoning,
    model_time,
    note,
    read_json,
    start,
    timings_json,
    usage_json,
)
from localr1.server.protocol import Generation, RequestError
from localr1.server.service import Busy, Served, Service
from localr1.server.settings import Settings


async def openai_generate(request: Request, chat: bool) -> Response:
    service: Service = request.app.state.service
    settings: Settings = request.app.state.settings
    body = await read_json(request, settings.max_body)
    gen = protocol.openai_chat(body) if chat else protocol.openai_completion(body)
    started = await start(request, gen)
    if not isinstance(started, tuple):
        return started or Response(status_code=499)
    events, first = started
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    common = {
        "id": ident,
        "created": created,
        "model": service.name,
        "system_fingerprint": f"localr1-{__version__}",
    }
    if not gen.stream:
        return JSONResponse(reply(await collect(request, events, first), gen, chat, common))
    return StreamingResponse(
        sse(request, events, first, gen, chat, common),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def reply(run: Run, gen: Generation, chat: bool, common: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming reply's JSON, with the reasoning where the request asked for it."""
    reasoning, answer = "".join(run.reasoning), "".join(run.answer)
    if gen.reasoning == "inline":
        content, reasoning_content = inline_reasoning(reasoning, answer), None
    elif gen.reasoning == "hidden":
        content, reasoning_content = answer, None
    else:
        content, reasoning_content = answer, reasoning
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning_content is not None:
            message["reasoning_content"] = reasoning_content
        if run.tool_calls:  # OpenAI's content is null beside calls, unless the model wrote text too
            message["tool_calls"] = [call_json(c) for c in run.tool_calls]
            message["content"] = content if content.strip() else None
        reason = finish_reason(run.done, bool(run.tool_calls))
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": content, "finish_reason": finish_reason(run.done), "logprobs": None}
        if reasoning_content is not None:
            choice["reasoning_content"] = reasoning_content
    obj = "chat.completion" if chat else "text_completion"
    payload = {**common, "object": obj, "choices": [choice], "usage": usage_json(run.done)}
    payload["timings"] = timings_json(run.done)
    if run.done is not None and run.done.thinking is not None:  # localr1's: what the budget did
        payload["thinking_budget"] = run.done.thinking.to_dict()
    return payload


def call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {} if index is None else {"index": index}
    out.update(id=call.id, type="function", function={"name": call.name, "arguments": call.arguments})
    return out


async def sse(
    request: Request, events: AsyncIterator[Served], first: Served, gen: Generation, chat: bool, common: dict[str, Any]
) -> AsyncIterator[bytes]:
    """A streaming reply: one SSE chunk per event, the reasoning where the request asked for it."""
    run = Run()
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
        event: Served | None = first
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
                elif isinstance(event, ToolCall):  # each call whole, once the model has finished writing it
                    if inline_open:
                        yield chunk({"content": "\n</think>\n\n"})
                        inline_open = False
                    yield chunk({"tool_calls": [call_json(event, len(run.tool_calls) - 1)]})
            if isinstance(event, Done):
                break
            try:
                pending = [await events.__anext__()]
            except StopAsyncIteration:
                break
        note(request, run)
        extra = {
            "timings": timings_json(run.done),
            "reasoning_unfinished": bool(run.done and run.done.reasoning_unfinished),
        }
        if run.done is not None and run.done.thinking is not None:
            extra["thinking_budget"] = run.done.thinking.to_dict()
        if inline_open:
            yield chunk({"content": "\n</think>\n\n"})
        yield chunk({}, finish_reason(run.done, bool(run.tool_calls)), **extra)
        if gen.include_usage:
            data = {**common, "object": obj, "choices": [], "usage": usage_json(run.done)}
            yield b"data: " + json.dumps(data).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    except LocalR1Error as exc:  # after the headers went out: an error event ends the stream
        error = {"error": {"message": exc.message, "type": "server_error", "param": None, "code": None}}
        yield b"data: " + json.dumps(error).encode() + b"\n\n"
    finally:
        await events.aclose()


async def chat_completions(request: Request) -> Response:
    return await openai_generate(request, chat=True)


async def completions(request: Request) -> Response:
    return await openai_generate(request, chat=False)


def model_card(service: Service) -> dict[str, Any]:
    return {"id": service.name, "object": "model", "created": int(model_time(service)), "owned_by": "localr1"}


async def list_models(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"object": "list", "data": [model_card(service)]})


async def get_model(request: Request) -> Response:
    service: Service = request.app.state.service
    service.check_model(request.path_params["model"])
    return JSONResponse(model_card(service))


async def tokenize(request: Request) -> Response:
    """llama-server's /tokenize: the token ids of ``content`` (``ask --server`` counts with it)."""
    service: Service = request.app.state.service
    settings: Settings = request.app.state.settings
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


async def root(request: Request) -> Response:
    return PlainTextResponse("localr1 is running")


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
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
