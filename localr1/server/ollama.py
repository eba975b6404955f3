"""The Ollama routes under /api: events rendered as NDJSON or JSON, and the model's description."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from localr1 import __version__
from localr1.errors import LocalR1Error
from localr1.events import Answer, Done, Reasoning, ToolCall
from localr1.server import protocol
from localr1.server.exchange import Run, collect, finish_reason, model_time, note, read_json, start
from localr1.server.protocol import RequestError
from localr1.server.service import Served, Service
from localr1.server.settings import Settings

OLLAMA_VERSION = "0.12.0"  # the Ollama API version these routes follow (clients compare against it)


async def ollama_generate(request: Request, chat: bool) -> Response:
    service: Service = request.app.state.service
    settings: Settings = request.app.state.settings
    body = await read_json(request, settings.max_body)
    gen = protocol.ollama_chat(body, service.n_ctx_slot) if chat else protocol.ollama_generate(body, service.n_ctx_slot)
    shape = _Shape(gen.model or service.name, chat, gen.reasoning == "separate")
    if gen.load_only:  # a preload: the model is loaded already (Ollama answers one object, streaming or not)
        service.check_model(gen.model)
        return JSONResponse({**shape.piece("", "", done=True), "done_reason": "load"})
    started = await start(request, gen)
    if not isinstance(started, tuple):
        return started or Response(status_code=499)
    events, first = started
    if not gen.stream:
        run = await collect(request, events, first)
        thinking = "".join(run.reasoning) if shape.thinking else ""
        return JSONResponse(
            shape.final(shape.piece(thinking, "".join(run.answer), done=True, calls=run.tool_calls), run.done)
        )
    return StreamingResponse(ndjson(request, events, first, shape), media_type="application/x-ndjson")


class _Shape:
    """An Ollama reply's objects: /api/chat's ``message`` or /api/generate's ``response``, thinking apart."""

    def __init__(self, model: str, chat: bool, thinking: bool) -> None:
        self.model, self.chat, self.thinking = model, chat, thinking

    def piece(
        self, thinking: str, content: str, done: bool = False, calls: list[ToolCall] | None = None
    ) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        out: dict[str, Any] = {"model": self.model, "created_at": now}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:  # Ollama's shape: the arguments as an object
                message["tool_calls"] = [
                    {"function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls
                ]
            out["message"] = message
        else:
            out["response"] = content
            if thinking:
                out["thinking"] = thinking
        out["done"] = done
        return out

    def final(self, out: dict[str, Any], d: Done | None) -> dict[str, Any]:
        t = d.timings if d else None
        ns = 1_000_000_000
        out.update(
            done_reason=finish_reason(d),
            total_duration=int(((t.prefill_s + t.decode_s) if t else 0) * ns),
            load_duration=int((t.load_s if t else 0) * ns),
            prompt_eval_count=d.usage.prompt_tokens if d else 0,
            prompt_eval_duration=int((t.prefill_s if t else 0) * ns),
            eval_count=d.usage.completion_tokens if d else 0,
            eval_duration=int((t.decode_s if t else 0) * ns),
        )
        return out

    def split(self, event: Served) -> tuple[str, str]:
        if isinstance(event, Reasoning):
            return (event.text, "") if self.thinking else ("", "")
        if isinstance(event, Answer):
            return "", event.text
        return "", ""


async def ndjson(request: Request, events: AsyncIterator[Served], first: Served, shape: _Shape) -> AsyncIterator[bytes]:
    """A streaming reply: one JSON line per event, then the final object with the counts and durations."""
    run = Run()
    try:
        event: Served = first
        while True:
            run.add(event)
            thinking, content = shape.split(event)
            if thinking or content:
                yield json.dumps(shape.piece(thinking, content), ensure_ascii=False).encode() + b"\n"
            elif isinstance(event, ToolCall):
                yield json.dumps(shape.piece("", "", calls=[event]), ensure_ascii=False).encode() + b"\n"
            if isinstance(event, Done):
                break
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                break
        note(request, run)
        yield json.dumps(shape.final(shape.piece("", "", done=True), run.done)).encode() + b"\n"
    except LocalR1Error as exc:
        yield json.dumps({"error": exc.message}).encode() + b"\n"
    finally:
        await events.aclose()


async def api_chat(request: Request) -> Response:
    return await ollama_generate(request, chat=True)


async def api_generate(request: Request) -> Response:
    return await ollama_generate(request, chat=False)


def details(service: Service) -> dict[str, Any]:
    info = service.info
    return {
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": "",
        "quantization_level": info.quant,
    }


def modified(service: Service) -> str:
    return datetime.fromtimestamp(model_time(service), UTC).isoformat().replace("+00:00", "Z")


async def api_tags(request: Request) -> Response:
    service: Service = request.app.state.service
    size = int(service.info.extra.get("file_size", 0) or 0)
    entry = {
        "name": service.name,
        "model": service.name,
        "modified_at": modified(service),
        "size": size,
        "digest": "",
        "details": details(service),
    }
    return JSONResponse({"models": [entry]})


async def api_show(request: Request) -> Response:
    service: Service = request.app.state.service
    settings: Settings = request.app.state.settings
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
            "details": details(service),
            "model_info": {
                "general.architecture": info.architecture,
                f"{info.architecture}.context_length": info.n_ctx_train,
                # what `localr1 ask --server` needs to build prompts exactly as the server does
                "localr1.context_per_request": service.n_ctx_slot,
                "localr1.bos_token": fmt.bos_token,
                "localr1.eos_token": fmt.eos_token,
                "localr1.add_bos": fmt.add_bos,
                "localr1.text.reasoning": fmt.reasoning,
                "localr1.template_source": fmt.source,
                "localr1.quant": info.quant,
            },
            # tools: described to any model in DeepSeek's format, their calls read out of the answer
            "capabilities": ["completion", "tools", "thinking"] if fmt.reasoning else ["completion", "tools"],
            "modified_at": modified(service),
        }
    )


async def api_version(request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_VERSION, "localr1": __version__})


async def api_ps(request: Request) -> Response:
    service: Service = request.app.state.service
    size = int(service.info.extra.get("file_size", 0) or 0)
    return JSONResponse(
        {"models": [{"name": service.name, "model": service.name, "size": size, "details": details(service)}]}
    )
