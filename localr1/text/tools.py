"""Tool calls in DeepSeek's own format: the tools described to the model, its calls parsed out of the answer,
and earlier calls written back into the history.

R1 (and R1-0528, which was trained for function calling) writes a call with the vocabulary's own tokens,
as every R1 GGUF's chat template renders it::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Paris"}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

several calls follow each other inside one ``calls`` block. The distills' templates render tool results
(``<｜tool▁outputs▁begin｜>``) but not the tools themselves, so the tools are described in the first user turn
(R1 takes no system prompt), in the words DeepSeek's later templates use.

``ToolCallParser`` reads the answer as it streams, in pieces cut anywhere: text outside a calls block is
content, each complete call becomes a ``ToolCall``, and a block that does not parse (no name, arguments that
are not a JSON object, a block cut off by the end of the reply) is handed on as the content it is — never
lost, never an exception. Pure logic: the server renders what it returns.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from localr1.events import ToolCall

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
OUTPUT_END = "<｜tool▁output▁end｜>"
OUTPUTS_END = "<｜tool▁outputs▁end｜>"

# the spellings of the block's start that models write besides the vocabulary's token (llama.cpp accepts
# the same ones): "_" or " " for "▁", and the short form
_BEGIN_FORMS = (CALLS_BEGIN, "<｜tool_calls_begin｜>", "<｜tool calls begin｜>", "<｜tool▁calls｜>")
_CALL_BEGIN_FORMS = (CALL_BEGIN, "<｜tool_call_begin｜>", "<｜tool call begin｜>")
_CALL_END_FORMS = (CALL_END, "<｜tool_call_end｜>", "<｜tool call end｜>")
_CALLS_END_FORMS = (CALLS_END, "<｜tool_calls_end｜>", "<｜tool calls end｜>")
_SEP_FORMS = (SEP, "<｜tool_sep｜>", "<｜tool sep｜>")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and the JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None

    @property
    def schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters else {"type": "object", "properties": {}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def describe(tools: Sequence[Tool]) -> str:
    """The tools as the model is told of them (DeepSeek's wording), for the first user turn."""
    lines = ["## Tools", "You have access to the following tools:"]
    for tool in tools:
        lines += ["", f"### {tool.name}"]
        if tool.description:
            lines.append(f"Description: {tool.description}")
        lines += ["", f"Parameters: {json.dumps(tool.schema, ensure_ascii=False)}"]
    lines += [
        "",
        "IMPORTANT: ALWAYS adhere to this exact format for tool use:",
        f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}tool_call_name\n```json\ntool_call_arguments\n```{CALL_END}"
        f"{{{{additional_tool_calls}}}}{CALLS_END}",
        "",
        "Where:",
        "- `tool_call_name` must be an exact match to one of the available tools",
        "- `tool_call_arguments` must be valid JSON based on the required parameters and the schema",
        "- For multiple tool calls, chain them directly without separators or spaces",
    ]
    return "\n".join(lines)


def call_text(call: ToolCall) -> str:
    return f"{CALL_BEGIN}function{SEP}{call.name}\n```json\n{call.arguments}\n```{CALL_END}"


def calls_text(calls: Iterable[ToolCall]) -> str:
    """Earlier calls as the model wrote them, for the history."""
    return CALLS_BEGIN + "".join(call_text(c) for c in calls) + CALLS_END


def outputs_text(outputs: Sequence[str]) -> str:
    """Tool results in DeepSeek's tokens (for templates that render them as text)."""
    return OUTPUTS_BEGIN + "\n".join(OUTPUT_BEGIN + o + OUTPUT_END for o in outputs) + OUTPUTS_END


def _find(text: str, forms: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """The first of ``forms`` in ``text`` from ``start``: (index, form), or None."""
    best: tuple[int, str] | None = None
    for form in forms:
        i = text.find(form, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, form)
    return best


def _held(text: str, forms: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of one of ``forms``."""
    longest = 0
    for form in forms:
        for n in range(min(len(form) - 1, len(text)), longest, -1):
            if form.startswith(text[-n:]):
                longest = n
                break
    return longest


_STRUCTURE = (*_CALL_BEGIN_FORMS, *_CALLS_END_FORMS)


def _next_call(text: str, start: int) -> tuple[ToolCall | None, int]:
    """The call whose body starts at ``start``: (call, where it ends); (None, -1) while that is not known
    yet; (None, 0) if it does not parse. An end token inside the arguments' strings is passed over."""
    search = start
    while True:
        found = _find(text, _CALL_END_FORMS, search)
        if found is None:
            return None, -1
        end = found[0] + len(found[1])
        call = parse_call(text[start : found[0]])
        if call is not None:
            return call, end
        after = text[end:].lstrip()
        if not after or any(f.startswith(after) for f in _STRUCTURE):
            return None, -1
        if any(after.startswith(f) for f in _STRUCTURE):
            return None, 0
        search = end


def parse_call(body: str) -> ToolCall | None:
    """One call's text between its begin and end tokens ("function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```"),
    or None where it is not a call with a name and a JSON object for arguments."""
    sep = _find(body, _SEP_FORMS)
    if sep is None:
        return None
    kind, rest = body[: sep[0]].strip(), body[sep[0] + len(sep[1]) :]
    if kind not in ("", "function"):
        return None
    name, _, arguments = rest.partition("\n")
    name = name.strip()
    if not NAME_PATTERN.fullmatch(name):
        return None
    arguments = arguments.strip()
    if arguments.startswith("```"):  # the fence: ```json ... ```
        arguments = arguments[3:]
        if arguments.startswith("json"):
            arguments = arguments[4:]
        if not arguments.rstrip().endswith("```"):
            return None
        arguments = arguments.rstrip()[:-3]
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return ToolCall(new_call_id(), name, json.dumps(value, ensure_ascii=False))


class ToolCallParser:
    """The answer, as it streams, split into content and tool calls.

    ``feed`` takes the next piece of the answer and returns what is settled: strings (content) and
    ``ToolCall``s, in order; text that may still turn out to be part of a call is held back until it is
    settled. ``finish`` returns the rest at the end of the reply: an unfinished or malformed block comes back
    as content. ``limit`` caps the calls taken (1 where parallel calls are off): later ones are dropped."""

    def __init__(self, limit: int | None = None) -> None:
        self._buffer = ""
        self._in_block = False
        self._limit = limit
        self.calls = 0

    def feed(self, text: str) -> list[str | ToolCall]:
        self._buffer += text
        out: list[str | ToolCall] = []
        while True:
            if not self._in_block:
                found = _find(self._buffer, _BEGIN_FORMS)
                if found is None:
                    keep = _held(self._buffer, _BEGIN_FORMS)
                    settled = self._buffer[: len(self._buffer) - keep]
                    if settled:
                        out.append(settled)
                    self._buffer = self._buffer[len(settled) :]
                    return out
                if found[0]:
                    out.append(self._buffer[: found[0]])
                self._buffer = self._buffer[found[0] :]
                self._block_start = len(found[1])
                self._in_block = True
            if not self._parse_block(out):
                return out

    def _parse_block(self, out: list[str | ToolCall]) -> bool:
        """Take the complete calls at the start of the block; True once the block has ended (or failed)."""
        while True:
            rest = self._buffer[self._block_start :].lstrip()
            end = next((f for f in _CALLS_END_FORMS if rest.startswith(f)), None)
            if end is not None:  # the block is over: what follows is content again
                self._buffer, self._in_block = rest[len(end) :], False
                return True
            begin = next((f for f in _CALL_BEGIN_FORMS if rest.startswith(f)), None)
            if begin is None:
                if any(f.startswith(rest) for f in _STRUCTURE):  # the next token is still coming
                    return False
                return self._malformed(out)
            call, after = _next_call(rest, len(begin))
            if after < 0:  # its end has not come yet
                return False
            if call is None:
                return self._malformed(out)
            if self._limit is None or self.calls < self._limit:
                out.append(call)
                self.calls += 1
            self._buffer, self._block_start = rest[after:], 0

    def _malformed(self, out: list[str | ToolCall]) -> bool:
        """A block that is not made of calls: its text is content, as the model wrote it."""
        out.append(self._buffer)
        self._buffer, self._in_block = "", False
        return True

    def finish(self) -> list[str | ToolCall]:
        """The rest at the end of the reply: text held back, or an unfinished block, as content."""
        rest, self._buffer, self._in_block = self._buffer, "", False
        return [rest] if rest else []


def split_calls(text: str, limit: int | None = None) -> tuple[str, list[ToolCall]]:
    """A whole answer's content and calls (the non-streaming reply)."""
    parser = ToolCallParser(limit)
    parts = [*parser.feed(text), *parser.finish()]
    return "".join(p for p in parts if isinstance(p, str)), [p for p in parts if isinstance(p, ToolCall)]
