"""A scripted engine for fast, exact tests of everything above the engine (CLI, TUI).

Its "tokens" are the pieces of a script; they go through the same UTF-8 and reasoning assembly as the
real engine's, so the front ends see exactly what a real model stream would give them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence

from localr1.engine import registry
from localr1.engine.base import ModelInfo
from localr1.engine.generation import Generation
from localr1.events import Event, FinishReason, Timings
from localr1.text.prompt import Prompt, chat_format_for
from localr1.text.reasoning import THINK_CLOSE
from localr1.text.sampling import Sampling

_CLOSE_ID = -2  # the script's "</think>" as a token id (the others are their positions)


def _pieces(text: str) -> list[bytes]:
    """The fake's tokens of an appended text: the delimiter alone, and the text around it (so the transition
    is 3 tokens and "Wait" 1)."""
    return [p.encode() for p in re.split(f"({re.escape(THINK_CLOSE)})", text) if p]


def fake_model_info(name: str | None = None, *, reasoning: bool = True, n_ctx: int = 4096) -> ModelInfo:
    name = name or ("fake-r1" if reasoning else "fake-chat")
    template = (
        "{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}<｜Assistant｜>"
        if reasoning
        else "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n"
    )
    return ModelInfo(
        name=name,
        path=None,
        architecture="qwen2",
        quant="Q4_K_M",
        n_ctx=n_ctx,
        n_ctx_train=n_ctx,
        chat_format=chat_format_for(template, name=name),
    )


class FakeEngine:
    """Replays scripted replies. Each call to :meth:`stream` takes the next script.

    A script is a sequence of pieces: ``str`` (encoded to UTF-8) or ``bytes`` (to split characters).
    ``delay`` sleeps between pieces (to test spinners and cancellation); ``interrupt_after`` raises
    ``KeyboardInterrupt`` after that many pieces, as a Ctrl-C would; ``timings`` replaces the measured
    figures in ``Done``.
    """

    def __init__(
        self,
        scripts: Sequence[Sequence[str | bytes]] = (),
        *,
        info: ModelInfo | None = None,
        delay: float = 0.0,
        interrupt_after: int | None = None,
        finish_reason: FinishReason = "stop",
        timings: Timings | None = None,
    ) -> None:
        self._scripts = [list(s) for s in scripts]
        self.info = info or fake_model_info()
        self.delay = delay
        self.interrupt_after = interrupt_after
        self.finish_reason = finish_reason
        self.timings = timings  # scripted figures, for output that must not vary (snapshots)
        self.prompts: list[Prompt] = []
        self.samplings: list[Sampling] = []
        self.closed = False
        self.used_after_close = False  # a piece streamed after close(): the real engine would segfault
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """One "token" per word (ids are the words' positions): enough for the front ends' counting."""
        return list(range(int(add_bos) + len(text.split())))

    def end_tokens(self) -> list[int]:
        return []

    def reset(self) -> None:
        pass

    def stream(self, prompt: Prompt, sampling: Sampling, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        with self._lock:  # as the real engine: close() waits for a generation to stop
            yield from self._stream(prompt, sampling, cancel)

    def _stream(self, prompt: Prompt, sampling: Sampling, cancel: threading.Event | None) -> Iterator[Event]:
        self.prompts.append(prompt)
        self.samplings.append(sampling)
        script = self._scripts.pop(0) if self._scripts else ["<think>\n", "Hmm.", "</think>", "\n\nOK."]
        # each piece is a token; every piece is handed on at once (interval 0), so UI tests see each one
        room = self.info.n_ctx - self.count_tokens(prompt.text)
        gen = Generation(prompt, sampling, room=room, close_token=lambda: _CLOSE_ID, interval=0.0)
        start = time.perf_counter()
        finish: FinishReason = self.finish_reason
        for i, piece in enumerate(script):
            if self.closed:
                self.used_after_close = True
            if (cancel is not None and cancel.is_set()) or self._closing.is_set():
                finish = "cancelled"
                break
            if gen.full:
                finish = "length"
                break
            if self.interrupt_after is not None and i >= self.interrupt_after:
                raise KeyboardInterrupt
            if self.delay:
                time.sleep(self.delay)
            data = piece.encode() if isinstance(piece, str) else piece
            step = gen.choose(_CLOSE_ID if data == THINK_CLOSE.encode() else i, data)
            yield from step.events
            if step.append is not None:
                events = gen.append(_pieces(step.append))
                if events is None:
                    finish = "length"
                    break
                yield from events
                if step.decode:  # a cut (the token stays, then the transition), not a "Wait"
                    # the model would now answer: the script's own thinking up to its "</think>" is skipped
                    rest = script[i + 1 :]
                    close = next((j for j, p in enumerate(rest) if p in (THINK_CLOSE, THINK_CLOSE.encode())), None)
                    if close is not None:
                        yield from self._replay(rest[close + 1 :], gen, cancel)
                    break
            if step.finish is not None:
                finish = step.finish
                break
        elapsed = time.perf_counter() - start
        n_prompt = self.count_tokens(prompt.text)
        timings = Timings(
            prefill_s=0.0,
            decode_s=elapsed,
            thinking_s=gen.assembler.thinking_s,
            prompt_tokens=n_prompt,
            decode_tokens=gen.assembler.completion_tokens,
        )
        yield from gen.done(finish, prompt_tokens=n_prompt, timings=self.timings or timings)

    def _replay(self, pieces, gen: Generation, cancel) -> Iterator[Event]:
        """The rest of the script after a cut: the answer, as the model writes it after the transition."""
        for i, piece in enumerate(pieces):
            if (cancel is not None and cancel.is_set()) or self._closing.is_set() or gen.full:
                return
            yield from gen.choose(i, piece.encode() if isinstance(piece, str) else piece).events

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        if self._lock.acquire(timeout=timeout):
            self.closed = True
            self._lock.release()


def _fake_factory(path, header, options, cancel=None) -> FakeEngine:
    """The registry's ``fake`` engine: a default script, named after the file it was asked to open."""
    return FakeEngine(info=fake_model_info(path.name if path is not None else None, n_ctx=options.n_ctx or 4096))


def _register() -> None:

    registry.register("fake", _fake_factory)


_register()
