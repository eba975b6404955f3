"""Splitting a stream of generated text into reasoning and answer.

R1 models write ``<think> ... </think>`` and then the answer. Text arrives in arbitrary pieces (one token,
or a few bytes of a multi-byte character), so the tags can be split across pieces. The splitter holds
back exactly the text that could still turn out to be a tag, and nothing else, so what is shown is never
later taken back.

Two small pieces live here:

* :class:`Utf8Stream` turns token bytes into text, holding back an incomplete UTF-8 sequence instead of
  printing U+FFFD for it;
* :class:`ReasoningSplitter` turns text into ``("reasoning" | "answer", text)`` pieces.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Literal

Channel = Literal["reasoning", "answer"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def thought_summary(seconds: float, tokens: int = 0, *, unfinished: bool = False) -> str:
    """The one line a finished thought folds into, the same in ask, chat and exported chats:
    "Thought for 12.4 s (531 tokens)" (the count left out where it is not known)."""
    verb = "Stopped thinking after" if unfinished else "Thought for"
    return f"{verb} {seconds:.1f} s" + (f" ({tokens:,} tokens)" if tokens else "")


class Utf8Stream:
    """Incremental UTF-8 decoding at the byte level.

    An incomplete sequence at the end of a chunk is kept for the next chunk; only bytes that can never
    become valid UTF-8 are replaced by U+FFFD.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # feed(data) -> str is the decoder's own method (final=False by default): no Python frame per token
        self.feed = self._decoder.decode

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    if tag[0] not in text[-(len(tag) - 1) :]:
        return 0
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """A streaming state machine: ``start`` -> ``reasoning`` -> ``answer``.

    * ``start``: nothing but white space seen yet. If the text opens with ``<think>`` the model is
      reasoning; anything else means a model that does not reason, and everything is answer.
    * ``reasoning``: text up to ``</think>`` is reasoning.
    * ``answer``: everything after ``</think>`` (white space right after the tag is dropped).

    ``opened=True`` starts in ``reasoning``: the prompt already ended with ``<think>`` (R1's forced
    reasoning), so the model's first token is already thinking.
    """

    def __init__(self, *, opened: bool = False) -> None:
        self.state: Literal["start", "reasoning", "answer"] = "reasoning" if opened else "start"
        self._pending = ""
        self._strip_answer_lead = False
        self._strip_reasoning_lead = opened
        self.saw_reasoning = opened
        self.closed_reasoning = False

    @property
    def in_reasoning(self) -> bool:
        return self.state == "reasoning"

    @property
    def holding(self) -> bool:
        """Text is held back because it could still become a tag (or precede one)."""
        return bool(self._pending)

    def feed(self, text: str) -> list[tuple[Channel, str]]:
        # The common case, once per token: a piece in the middle of the reasoning or of the answer with
        # nothing held back. Without "<" it cannot hold or start a tag; a final newline must wait.
        if not self._pending and text:
            if self.state == "reasoning" and not self._strip_reasoning_lead:
                if "<" not in text and text[-1] != "\n":
                    return [("reasoning", text)]
            elif self.state == "answer" and not self._strip_answer_lead:
                return [("answer", text)]
        out: list[tuple[Channel, str]] = []
        buf = self._pending + text
        self._pending = ""
        while buf:
            if self.state == "start":
                stripped = buf.lstrip()
                if not stripped:
                    self._pending = buf
                    break
                if stripped.startswith(THINK_OPEN):
                    self.state = "reasoning"
                    self.saw_reasoning = True
                    self._strip_reasoning_lead = True
                    buf = stripped[len(THINK_OPEN) :]
                    continue
                if THINK_OPEN.startswith(stripped):
                    self._pending = buf  # could still become <think>
                    break
                self.state = "answer"
                self._strip_answer_lead = True
                continue
            if self.state == "reasoning":
                if self._strip_reasoning_lead:
                    buf = buf.lstrip("\n")
                    if buf.startswith(THINK_OPEN):  # re-emitted although the prompt opened it: drop it
                        buf = buf[len(THINK_OPEN) :]
                        continue
                    if not buf or THINK_OPEN.startswith(buf):
                        self._pending = buf
                        break
                    self._strip_reasoning_lead = False
                idx = buf.find(THINK_CLOSE)
                if idx >= 0:
                    self._emit(out, "reasoning", buf[:idx].rstrip("\n") if idx else "")
                    self.state = "answer"
                    self.closed_reasoning = True
                    self._strip_answer_lead = True
                    buf = buf[idx + len(THINK_CLOSE) :]
                    continue
                keep = _partial_suffix(buf, THINK_CLOSE)
                # Trailing newlines before </think> are held back too, so the reasoning does not end on
                # a blank line; they are released if more reasoning follows.
                body = buf[: len(buf) - keep]
                stripped_body = body.rstrip("\n")
                self._pending = body[len(stripped_body) :] + buf[len(buf) - keep :]
                self._emit(out, "reasoning", stripped_body)
                break
            # answer
            if self._strip_answer_lead:
                buf = buf.lstrip()
                if not buf:
                    break
                self._strip_answer_lead = False
            self._emit(out, "answer", buf)
            break
        return out

    def finish(self) -> list[tuple[Channel, str]]:
        """Release what was held back at the end of generation."""
        out: list[tuple[Channel, str]] = []
        pending, self._pending = self._pending, ""
        if not pending:
            return out
        if self.state == "start":
            # A model that wrote only white space, or a lone prefix of "<think>": that is its answer.
            self._emit(out, "answer", pending.lstrip())
        elif self.state == "reasoning":
            self._emit(out, "reasoning", pending.rstrip("\n"))
        else:
            self._emit(out, "answer", pending)
        return out

    @staticmethod
    def _emit(out: list[tuple[Channel, str]], channel: Channel, text: str) -> None:
        if not text:
            return
        if out and out[-1][0] == channel:
            out[-1] = (channel, out[-1][1] + text)
        else:
            out.append((channel, text))


def split_text(pieces: Iterable[str], *, opened: bool = False) -> tuple[str, str]:
    """Split a whole sequence of pieces at once: returns ``(reasoning, answer)``."""
    splitter = ReasoningSplitter(opened=opened)
    parts: dict[Channel, list[str]] = {"reasoning": [], "answer": []}
    for piece in pieces:
        for channel, text in splitter.feed(piece):
            parts[channel].append(text)
    for channel, text in splitter.finish():
        parts[channel].append(text)
    return "".join(parts["reasoning"]), "".join(parts["answer"])


def strip_reasoning(text: str) -> str:
    """The answer part of a complete reply (what goes back into the chat history)."""
    return split_text([text])[1]
