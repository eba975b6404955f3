"""The engine interface, and the token-to-event assembly every engine shares."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from localr1.events import Answer, Done, Event, FinishReason, Reasoning, Timings, Usage
from localr1.text.prompt import ChatFormat, Prompt
from localr1.text.reasoning import ReasoningSplitter, Utf8Stream
from localr1.text.sampling import Sampling


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path | None
    architecture: str
    quant: str
    n_ctx: int  # the context this engine was created with
    n_ctx_train: int
    chat_format: ChatFormat
    n_gpu_layers: int = 0
    n_threads: int = 0
    load_s: float = 0.0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What ``ask``, ``chat``, ``bench`` and ``serve`` use of an engine: the real one (``engine/llama_cpp.py``),
    its batched form for serving (``engine/batching.py``), a running server (``engine/remote.py``) and the
    scripted one (``engine/fake.py``) all provide it."""

    info: ModelInfo

    def stream(self, prompt: Prompt, sampling: Sampling, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Generate a continuation of ``prompt``; the last event is always ``Done``."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is (the context a prompt takes)."""
        ...

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]: ...

    def end_tokens(self) -> list[int]:
        """End-of-stream and end-of-turn tokens (to bias off where a fixed length is wanted)."""
        ...

    def reset(self) -> None:
        """Forget the KV cache: the next prompt is processed from its first token."""
        ...

    def close(self) -> None:
        """Free the model; a generation running in another thread is stopped and waited for first."""
        ...


def common_prefix(cached: list[int], tokens: list[int]) -> int:
    """How many leading tokens two token lists share: what a KV cache holding ``cached`` can keep."""
    n = 0
    for a, b in zip(cached, tokens):
        if a != b:
            break
        n += 1
    return n


class EventAssembler:
    """Token bytes in, typed events out: UTF-8 reassembly, the reasoning split and the counting.

    The real engine and the fake one both feed it, so the fake exercises the same path.
    """

    def __init__(self, *, opened: bool, clock: Callable[[], float] = time.perf_counter) -> None:
        self._utf8 = Utf8Stream()
        self.splitter = ReasoningSplitter(opened=opened)
        self._clock = clock
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self._uncounted = 0  # tokens read whose text has not gone out yet (tags, held-back text)
        self._first_token_at: float | None = None
        self._thinking_ended_at: float | None = None
        self._forcing = False  # what is fed now is the engine's text for a thinking budget, not the model's

    def feed(self, piece: bytes) -> list[Event]:
        """One token's bytes."""
        return self.feed_many([piece])

    def feed_many(self, pieces: list[bytes]) -> list[Event]:
        """Several tokens' bytes at once: the same events and counts as feeding them one by one.

        While a run of tokens cannot open or close a tag (mid-reasoning with no "<" in it and nothing held
        back, or in the answer) it is decoded and split in one go, with a few attribute reads: this runs
        after every llama.cpp decode, when the CPU caches are cold. Otherwise token by token.
        """
        if not pieces:
            return []
        splitter = self.splitter
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        state = splitter.state
        if state == "answer" or (state == "reasoning" and not splitter.holding and b"<" not in data):
            if self._first_token_at is None:
                self._first_token_at = self._clock()
            self.completion_tokens += len(pieces)
            if state == "reasoning":
                self.reasoning_tokens += len(pieces)
            return self._convert(splitter.feed(self._utf8.feed(data)), len(pieces))
        merged: list[Event] = []
        for piece in pieces:
            for event in self._feed_token(piece):
                if merged and type(merged[-1]) is type(event):
                    merged[-1] = replace(merged[-1], text=merged[-1].text + event.text,
                                         tokens=merged[-1].tokens + event.tokens)  # fmt: skip
                else:
                    merged.append(event)
        return merged

    def feed_forced(self, pieces: list[bytes]) -> list[Event]:
        """Tokens an engine appended for a thinking budget: the same path, their reasoning marked forced."""
        self._forcing = True
        try:
            return self.feed_many(pieces)
        finally:
            self._forcing = False

    def _feed_token(self, piece: bytes) -> list[Event]:
        """One token that may open or close a tag: counted by the state it was read in."""
        if self._first_token_at is None:
            self._first_token_at = self._clock()
        self.completion_tokens += 1
        splitter = self.splitter
        was_answer, closed = splitter.state == "answer", splitter.closed_reasoning
        events = self._convert(splitter.feed(self._utf8.feed(piece)), 1)
        if not was_answer and splitter.saw_reasoning:
            self.reasoning_tokens += 1
        if splitter.closed_reasoning and not closed:
            self._thinking_ended_at = self._clock()
        return events

    def finish(self) -> list[Event]:
        tail = self._utf8.flush()
        pieces = self.splitter.feed(tail) if tail else []
        pieces += self.splitter.finish()
        return self._convert(pieces, 0)

    @property
    def thinking_s(self) -> float:
        if self._first_token_at is None or not self.splitter.saw_reasoning:
            return 0.0
        end = self._thinking_ended_at if self._thinking_ended_at is not None else self._clock()
        return end - self._first_token_at

    def done(self, finish_reason: FinishReason, *, prompt_tokens: int, timings: Timings, thinking=None) -> Done:
        """``thinking``: the generation's ThinkingControl, when a budget was set."""
        unfinished = self.splitter.saw_reasoning and not self.splitter.closed_reasoning
        return Done(
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens, self.completion_tokens, self.reasoning_tokens),
            timings=timings,
            reasoning_unfinished=unfinished,
            thinking=thinking.report() if thinking is not None else None,
        )

    def _convert(self, pieces: list[tuple[str, str]], tokens: int) -> list[Event]:
        """Events for the splitter's pieces; the tokens read go with the first (a token's text starts there),
        or wait for the next piece when there is none."""
        tokens += self._uncounted
        if not pieces:
            self._uncounted = tokens
            return []
        self._uncounted = 0
        channel, text = pieces[0]
        forced = self._forcing
        first = Reasoning(text, tokens, forced) if channel == "reasoning" else Answer(text, tokens)
        if len(pieces) == 1:  # the common case, without a comprehension's frame
            return [first]
        return [
            first,
            *(
                Reasoning(text, 0, forced) if channel == "reasoning" else Answer(text, 0)
                for channel, text in pieces[1:]
            ),
        ]
