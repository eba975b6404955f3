"""The served model, as both APIs use it: prompts, admission, and one generation as an async event stream.

A generation runs ``engine.stream`` in its own thread (llama.cpp releases the GIL while it computes) and
hands the same typed events ``ask`` renders to the event loop. At most ``slots`` generations run at once
(the engine's parallel sequences); up to ``queue`` more wait in line; beyond that a request is turned away
at once (503), so a burst cannot pile up unbounded work. Stop strings are applied here, to the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from localr1.events import Answer, Done, Event, Reasoning, ToolCall
from localr1.server.protocol import Generation, RequestError
from localr1.text.prompt import Message, Prompt, continue_reply, render
from localr1.text.reasoning import THINK_OPEN
from localr1.text.stops import StopScanner
from localr1.text.tools import ToolCallParser

_END = object()

Served = Event | ToolCall  # what a generation hands the routes: the engine's events, and the answer's tool calls


class Busy(Exception):
    """Every slot is generating and the waiting line is full."""


@dataclass
class Admission:
    """How many requests may generate (``slots``) and wait (``queue``); used from the event loop only."""

    slots: int
    queue: int
    inside: int = 0

    def __post_init__(self) -> None:
        self._running = asyncio.Semaphore(self.slots)
        self._tokenizing = asyncio.Semaphore(1)  # /tokenize: one text at a time, in the same line

    def enter(self) -> None:
        if self.inside >= self.slots + self.queue:
            raise Busy
        self.inside += 1

    def leave(self) -> None:
        self.inside -= 1

    @property
    def waiting(self) -> int:
        return max(self.inside - self.slots, 0)


class Service:
    """One loaded model behind the HTTP routes."""

    def __init__(self, engine: Any, name: str, *, queue: int = 8) -> None:
        self.engine = engine
        self.info = engine.info
        self.name = name
        self.slots = int(getattr(engine, "slots", 1))
        self.n_ctx_slot = int(getattr(engine, "n_ctx_slot", self.info.n_ctx))
        self.admission = Admission(self.slots, queue)

    def knows(self, model: str | None) -> bool:
        """Whether a request's ``model`` names this server's model (absent: yes; Ollama adds ":latest")."""
        if model is None or model == "":
            return True
        return model in (self.name, f"{self.name}:latest")

    def check_model(self, model: str | None) -> None:
        if not self.knows(model):
            raise RequestError(
                f"model {model!r} is not served here; this server serves {self.name!r}",
                status=404,
                param="model",
                code="model_not_found",
            )

    def prompt(self, gen: Generation) -> Prompt:
        fmt = self.info.chat_format
        if gen.raw_prompt is not None:
            text = gen.raw_prompt
            add_bos = fmt.add_bos and not (fmt.bos_token and text.startswith(fmt.bos_token))
            return Prompt(text, opens_thinking=fmt.reasoning and text.rstrip().endswith(THINK_OPEN), add_bos=add_bos)
        messages = list(gen.messages)
        if gen.system:
            messages.insert(0, Message("system", gen.system))
        if messages[-1].role == "assistant":  # the start of the reply, for the model to continue
            return continue_reply(messages, fmt, tools=gen.tools)
        return render(messages, fmt, tools=gen.tools)

    async def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """The token ids of ``text``, admitted like a generation (Busy when the line is full) and one at a time:
        a tokenization holds a copy of its text and its ids, so unbounded ones in parallel were the way to
        take the server's memory (8 texts of 7.8 MB at once took it from 0.4 to 3.1 GB)."""
        self.admission.enter()
        try:
            async with self.admission._tokenizing:
                return await asyncio.to_thread(self.engine.tokenize, text, add_bos=add_bos)
        finally:
            self.admission.leave()

    async def generate(self, gen: Generation, prompt: Prompt) -> AsyncIterator[Served]:
        """The events of one generation; stop strings applied, and where the request offers tools, the calls
        in the answer read out of it (``ToolCall``s between its ``Answer``s). Closing the iterator cancels it."""
        self.admission.enter()  # Busy when the line is full
        try:
            async with self.admission._running:
                events = self._events(gen, prompt)
                if gen.tool_choice != "none":
                    events = _tool_calls(events, ToolCallParser(None if gen.parallel_tool_calls else 1))
                async for event in events:
                    yield event
        finally:
            self.admission.leave()

    async def _events(self, gen: Generation, prompt: Prompt) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shut down): nobody is listening
                cancel.set()

        def work() -> None:
            try:
                for event in self.engine.stream(prompt, gen.sampling, cancel=cancel):
                    put(event)
            except BaseException as exc:  # noqa: BLE001 - handed to the request that caused it
                put(exc)
            finally:
                put(_END)

        threading.Thread(target=work, name="localr1-request", daemon=True).start()
        stops = StopScanner(gen.stop)
        try:
            while True:
                item = await items.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Answer) and stops.stops:
                    if stops.stopped:
                        continue
                    text = stops.feed(item.text)
                    if stops.stopped:
                        cancel.set()  # the rest is not wanted: free the slot
                    if text:
                        yield Answer(text, item.tokens)
                    continue
                if isinstance(item, Done):
                    if tail := stops.flush():
                        yield Answer(tail, 0)
                    if stops.stopped:
                        item = replace(item, finish_reason="stop")
                    yield item
                    continue
                if isinstance(item, Reasoning) and stops.stopped:
                    continue
                yield item
        finally:
            cancel.set()  # a client that went away: the engine frees its slot at the next step


async def _tool_calls(events: AsyncIterator[Event], parser: ToolCallParser) -> AsyncIterator[Served]:
    """The answer's tool calls as ``ToolCall`` events, the rest of its text as ``Answer``s."""
    try:
        async for event in events:
            if isinstance(event, Answer | Done):
                parts = parser.feed(event.text) if isinstance(event, Answer) else parser.finish()
                tokens = event.tokens if isinstance(event, Answer) else 0
                for part in parts:
                    yield Answer(part, tokens) if isinstance(part, str) else part
                    tokens = 0
                if isinstance(event, Answer):
                    continue
            yield event
    finally:
        await events.aclose()
