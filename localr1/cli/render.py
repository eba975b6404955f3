"""Rendering a stream of events on a terminal, or into one JSON object.

The answer goes to stdout, so pipes get only the answer. The thinking goes to stderr: streamed and dimmed
with ``--show-thinking``, otherwise replaced by a spinner and a one-line summary (on a terminal only).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from localr1.events import Answer, Done, Event, Reasoning
from localr1.text.reasoning import thought_summary

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

DIM = "\x1b[2m"
BOLD_DIM = "\x1b[1;2m"
RESET = "\x1b[0m"
FORCED = "\x1b[0;33m"  # text a thinking budget appended: not the model's, so not dimmed like its thinking
YELLOW = "\x1b[33m"


def _use_color(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


class _Spinner:
    """A 'Thinking… 3.2 s' line on stderr, redrawn by rich in its own thread."""

    def __init__(self, err: IO[str]) -> None:
        from rich.console import Console

        self._console = Console(file=err, stderr=True)
        self._status = self._console.status("Thinking…", spinner="dots")
        self._start = time.perf_counter()
        self._running = False

    def start(self) -> None:
        self._status.start()
        self._running = True

    def tick(self, tokens: int) -> None:
        if self._running:
            elapsed = time.perf_counter() - self._start
            self._status.update(f"Thinking… {elapsed:.1f} s · {tokens} tokens")

    def stop(self) -> None:
        if self._running:
            self._status.stop()
            self._running = False


class TerminalRenderer:
    def __init__(
        self,
        *,
        show_thinking: bool = False,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        spinner: bool | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.show_thinking = show_thinking
        self.color = _use_color(self.err)
        interactive = hasattr(self.err, "isatty") and self.err.isatty()
        self._spinner_wanted = interactive if spinner is None else spinner
        self._spinner: _Spinner | None = None
        self._state = "start"  # start | thinking | answer
        self._thinking_tokens = 0
        self._thinking_started: float | None = None
        self._answer_ends_with_newline = True
        self.answer_parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self.done: Done | None = None

    # --- events ---------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Before the first token (the model is reading the prompt)."""
        if self._spinner_wanted and not self.show_thinking:
            self._spinner = _Spinner(self.err)
            self._spinner.start()

    def handle(self, event: Event) -> None:
        if isinstance(event, Reasoning):
            self._on_reasoning(event.text, event.tokens, event.forced)
        elif isinstance(event, Answer):
            self._on_answer(event.text)
        elif isinstance(event, Done):
            self._on_done(event)

    def render(self, events: Iterable[Event]) -> Done | None:
        self.begin()
        try:
            for event in events:
                self.handle(event)
        finally:
            self.close()
        return self.done

    def close(self) -> None:
        if self._spinner:
            self._spinner.stop()
            self._spinner = None
        if self._state == "thinking" and self.show_thinking:
            self._err(RESET if self.color else "")
            self._err("\n")
            self._state = "closed"
        if self.answer_parts and not self._answer_ends_with_newline:
            self.out.write("\n")
            self._answer_ends_with_newline = True
        self.out.flush()
        self.err.flush()

    # --- internals ------------------------------------------------------------------------------------
    def _err(self, text: str) -> None:
        self.err.write(text)
        self.err.flush()

    def _on_reasoning(self, text: str, tokens: int, forced: bool = False) -> None:
        self.reasoning_parts.append(text)
        self._thinking_tokens += tokens
        if self._thinking_started is None:
            self._thinking_started = time.perf_counter()
        if self.show_thinking:
            if self._state == "start":
                self._err((BOLD_DIM + "Thinking" + RESET + DIM + "\n") if self.color else "Thinking\n")
                self._state = "thinking"
            if forced:  # the engine's words for a thinking budget, not the model's: marked as such
                lead = text[: len(text) - len(text.lstrip())]
                body = text.strip()
                self._err(f"{lead}{FORCED}[budget] {body}{RESET}{DIM}" if self.color else f"{lead}[budget] {body}")
            else:
                self._err(text)
        else:
            self._state = "thinking"
            if self._spinner:
                self._spinner.tick(self._thinking_tokens)

    def _end_thinking(self) -> None:
        if self._spinner:
            self._spinner.stop()
            self._spinner = None
        if self._state != "thinking":
            return
        if self.show_thinking:
            self._err((RESET + "\n\n") if self.color else "\n\n")
        elif self._spinner_wanted and self._thinking_started is not None:
            elapsed = time.perf_counter() - self._thinking_started
            line = thought_summary(elapsed, self._thinking_tokens)
            self._err((DIM + line + RESET + "\n") if self.color else line + "\n")
        self._state = "answer"

    def _on_answer(self, text: str) -> None:
        if self._state != "answer":
            self._end_thinking()
            self._state = "answer"
        self.answer_parts.append(text)
        self.out.write(text)
        self.out.flush()
        self._answer_ends_with_newline = text.endswith("\n")

    def _on_done(self, done: Done) -> None:
        self.done = done
        if self._state == "thinking":
            self._end_thinking()
        if done.reasoning_unfinished and done.finish_reason == "length":
            self._warn(
                f"The model was still thinking when it reached the token limit "
                f"({done.usage.completion_tokens} tokens): raise --max-tokens or --ctx."
            )
        elif done.finish_reason == "length":
            self._warn("The answer was cut off at the token limit: raise --max-tokens or --ctx.")

    def note(self, text: str) -> None:
        """A dim line on stderr, after the answer."""
        self._line_after_answer(text, DIM)

    def _warn(self, text: str) -> None:
        self._line_after_answer(text, YELLOW)

    def _line_after_answer(self, text: str, style: str) -> None:
        # the answer's last line is ended first, so that a terminal shows the two apart
        if self.answer_parts and not self._answer_ends_with_newline:
            self.out.write("\n")
            self.out.flush()
            self._answer_ends_with_newline = True
        self._err((style + text + RESET + "\n") if self.color else text + "\n")


def stats_line(label: str, done: Done) -> str:
    """``ask --stats``: what the run took, in one line (the full figures are in ``--json``)."""
    u, t = done.usage, done.timings

    def tokens(n: int) -> str:
        return f"{n:,} token" + ("" if n == 1 else "s")

    thinking = f" ({u.reasoning_tokens:,} thinking)" if u.reasoning_tokens else ""
    return (
        f"{label} · {tokens(u.completion_tokens)}{thinking} at {t.decode_tps:.1f} tokens/s"
        f" · prompt {tokens(u.prompt_tokens)} in {t.prefill_s:.2f} s · loaded in {t.load_s:.1f} s"
        + (f" · {t.drafts_kept}" if t.drafts_kept else "")
    )


def result_object(model: dict[str, Any], reasoning: str, answer: str, done: Done) -> dict[str, Any]:
    """The ``--json`` result: one object with the reasoning apart from the content (and, with a thinking
    budget, what it did: ``thinking_budget``)."""
    d = done.to_dict()
    out = {
        "model": model,
        "reasoning_content": reasoning,
        "content": answer,
        "finish_reason": d["finish_reason"],
        "reasoning_unfinished": d["reasoning_unfinished"],
        "usage": d["usage"],
        "timings": d["timings"],
    }
    if "thinking_budget" in d:
        out["thinking_budget"] = d["thinking_budget"]
    return out


def dump_json(obj: dict[str, Any], out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
    out.flush()
