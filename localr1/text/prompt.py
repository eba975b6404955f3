"""Prompt building: the model's own chat template, rendered safely, with R1's conventions.

DeepSeek's advice for R1, applied here:

* no system prompt: system text is folded into the first user turn;
* the assistant turn starts with ``<think>\\n`` so the model always reasons (added exactly once: newer
  templates already end with it);
* earlier answers stay in the history, their thinking does not;
* for math, ask to "reason step by step, and put your final answer within \\boxed{}".

Chat templates come from downloaded files, so they are rendered in Jinja2's immutable sandbox
(CVE-2024-34359 was a template in a GGUF file running code through an unsandboxed environment).
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from localr1.errors import TemplateError
from localr1.events import ToolCall
from localr1.text import tools as tool_format
from localr1.text.reasoning import THINK_CLOSE, THINK_OPEN, strip_reasoning
from localr1.text.tools import Tool

# Imported inside the functions that use them: jinja2 (heavy to import, and not needed by every command).

Role = Literal["system", "user", "assistant", "tool"]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    reasoning: str | None = None  # kept for display; never sent back to the model
    tool_calls: tuple[ToolCall, ...] = ()  # the assistant's calls (after its content)
    name: str | None = None  # a tool result's function


@dataclass(frozen=True)
class Prompt:
    text: str
    opens_thinking: bool  # the text ends inside an opened <think> block
    add_bos: bool = False  # the tokenizer must add BOS (the text does not start with it)


# Fallback templates, for GGUF files that carry none. Picked by the special tokens the vocabulary has.
FALLBACK_TEMPLATES: dict[str, str] = {
    "deepseek-r1": (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}"
        "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
        "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"
    ),
    "plain": (
        "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant: {% endif %}"
    ),
}
_FALLBACK_MARKERS = (
    ("deepseek-r1", "<｜User｜>"),
    ("chatml", "<|im_start|>"),
    ("llama3", "<|start_header_id|>"),
)


@dataclass(frozen=True)
class ChatFormat:
    """How to turn messages into text for one model."""

    template: str
    source: str  # "gguf" or "fallback:<name>"
    bos_token: str = ""
    eos_token: str = ""
    reasoning: bool = False  # an R1-style model that thinks inside <think> ... </think>
    add_bos: bool = False  # the tokenizer adds BOS itself


def chat_format_for(
    template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_bos: bool = False,
    has_token: Callable[[str], bool] = lambda _: False,
    name: str = "",
) -> ChatFormat:
    """The chat format of a model, from its GGUF template or a fallback chosen by its special tokens."""
    if template:
        source = "gguf"
    else:
        choice = next((n for n, marker in _FALLBACK_MARKERS if has_token(marker)), "plain")
        template, source = FALLBACK_TEMPLATES[choice], f"fallback:{choice}"
    reasoning = (
        THINK_CLOSE in template
        or has_token(THINK_OPEN)
        or "r1" in name.lower().replace("-", " ").split()
        or "<｜Assistant｜>" in template
    )
    return ChatFormat(template, source, bos_token, eos_token, reasoning, add_bos)


def user_turn(question: str, *, system: str | None = None, math: bool = False) -> list[Message]:
    """The messages for a one-shot question, as ``ask`` sends them."""
    content = question.strip()
    if math:
        content = f"{content}\n{MATH_INSTRUCTION}"
    messages: list[Message] = []
    if system and system.strip():
        messages.append(Message("system", system.strip()))
    messages.append(Message("user", content))
    return messages


def renders_tools(template: str) -> bool:
    """Whether a chat template describes the ``tools`` it is given itself (the distills' templates do not)."""
    return re.search(r"\btools\b", template) is not None


def _history_for_model(
    messages: Sequence[Message], fold_system: bool, tools: Sequence[Tool] = (), template: str = ""
) -> list[dict[str, Any]]:
    system_parts = [m.content for m in messages if m.role == "system" and m.content.strip()]
    description = tool_format.describe(tools) if tools and not renders_tools(template) else None
    if description and fold_system:
        system_parts.append(description)
    # DeepSeek's templates render tool results in their own tokens; with others they go in a user turn
    native_results = tool_format.OUTPUT_BEGIN in template
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            if not fold_system:
                out.append({"role": "system", "content": m.content})
            continue
        content = m.content
        if m.role == "assistant":
            # Earlier thinking is not sent back (DeepSeek's advice): only the answer stays.
            content = strip_reasoning(content) if THINK_CLOSE in content else content
            if m.tool_calls:  # as the model wrote them (the templates' own tool_calls branch drops the end)
                content += tool_format.calls_text(m.tool_calls)
        if m.role == "tool" and not native_results:
            if out and out[-1].get("tool_results") is not None:
                out[-1]["tool_results"].append(content)
                out[-1]["content"] = tool_format.outputs_text(out[-1]["tool_results"])
                continue
            out.append({"role": "user", "content": tool_format.outputs_text([content]), "tool_results": [content]})
            continue
        out.append({"role": m.role, "content": content})
    for entry in out:
        entry.pop("tool_results", None)
    if fold_system and system_parts:
        system_text = "\n\n".join(system_parts)
        for entry in out:
            if entry["role"] == "user":
                entry["content"] = f"{system_text}\n\n{entry['content']}"
                break
        else:
            out.insert(0, {"role": "user", "content": system_text})
    elif description:
        first = next((e for e in out if e["role"] == "system"), None)
        if first is None:
            out.insert(0, {"role": "system", "content": description})
        else:
            first["content"] = f"{first['content']}\n\n{description}"
    return out


# A chat template is code from a downloaded file: its output and its time are bounded. llama.cpp's
# tokenizer aborted (std::bad_alloc) on a template that rendered 400 MB, and nested loops hung the CLI.
MAX_RENDER_CHARS = 8 << 20  # far above any context's worth of text (a 1M-token context is ~4 MB)
RENDER_TIMEOUT_S = 2.0  # real templates render in well under 10 ms


class _RenderTimeout(BaseException):
    """Raised inside the rendering thread by the watchdog (BaseException: templates cannot catch it)."""


@functools.lru_cache(maxsize=1)
def _sandbox_class() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """Jinja's immutable sandbox, with ``*`` and ``**`` refused where their result would be huge."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                        raise TemplateError("the model's chat template builds a value larger than 8 MB")
            numbers = isinstance(right, (int, float)) and isinstance(left, (int, float))
            if operator == "**" and numbers and abs(right) > 4096 and abs(left) > 1:
                raise TemplateError("the model's chat template computes a number too large to print")
            return super().call_binop(context, operator, left, right)

    return BoundedSandbox


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    from jinja2.exceptions import TemplateError as JinjaTemplateError
    from jinja2.ext import loopcontrols

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the chat template refused the conversation: {message}")

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = _sandbox_class()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except RecursionError:
        raise TemplateError("the model's chat template is nested too deeply to parse") from None
    except JinjaTemplateError as exc:
        raise TemplateError(
            f"the model's chat template does not parse: {exc}",
            hint="Use a GGUF with a valid template, or report the file to its publisher.",
        ) from exc


def _render_bounded(compiled: Any, **context: Any) -> str:
    """``compiled.render(**context)``, stopped at ``MAX_RENDER_CHARS`` of output or ``RENDER_TIMEOUT_S``.

    The time limit is a watchdog thread that raises ``_RenderTimeout`` inside this thread (at its next
    Python instruction, so a template's loops stop at once, whatever thread renders)."""

    tid = threading.get_ident()
    lock = threading.Lock()
    rendering = [True]

    def expire() -> None:
        with lock:
            if rendering[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(_RenderTimeout))

    watchdog = threading.Timer(RENDER_TIMEOUT_S, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        parts, size = [], 0
        for chunk in compiled.generate(**context):
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise TemplateError("the model's chat template renders more than 8 MB of text")
            parts.append(chunk)
        return "".join(parts)
    finally:
        with lock:
            rendering[0] = False
        watchdog.cancel()
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)  # one not delivered yet: dropped


def render(
    messages: Sequence[Message], fmt: ChatFormat, *, force_thinking: bool = True, tools: Sequence[Tool] = ()
) -> Prompt:
    """Render the conversation into the text the model continues; ``tools``: the functions it may call."""
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    history = _history_for_model(messages, fold_system=fmt.reasoning, tools=tools, template=fmt.template)
    if not history or history[-1]["role"] not in ("user", "tool"):
        raise TemplateError("a prompt must end with a user message (or a tool's result)")
    compiled = _compile(fmt.template)
    try:
        text = _render_bounded(
            compiled,
            messages=history,
            add_generation_prompt=True,
            bos_token=fmt.bos_token,
            eos_token=fmt.eos_token,
            **({"tools": [_tool_json(t) for t in tools]} if tools and renders_tools(fmt.template) else {}),
        )
    except _RenderTimeout:
        raise TemplateError(
            f"the model's chat template did not finish rendering within {RENDER_TIMEOUT_S:g} s",
            hint="This GGUF's template loops without end: use another build of the model.",
        ) from None
    except RecursionError:
        raise TemplateError("the model's chat template recurses without end") from None
    except MemoryError:
        raise TemplateError("the model's chat template ran out of memory") from None
    except SecurityError as exc:
        raise TemplateError(
            f"the model's chat template tried to leave its sandbox ({exc})",
            hint="This GGUF file may be malicious: do not use it.",
        ) from exc
    except TemplateError:
        raise
    except (
        JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, LookupError,
    ) as exc:  # fmt: skip
        raise TemplateError(f"the model's chat template failed to render: {exc}") from exc

    add_bos = fmt.add_bos
    if add_bos and fmt.bos_token and text.startswith(fmt.bos_token):
        # The template writes BOS and the tokenizer would add it again: keep one.
        text = text[len(fmt.bos_token) :]
    opens = False
    if fmt.reasoning:
        tail = text.rstrip()
        if tail.endswith(THINK_OPEN):
            opens = True
        elif force_thinking:
            text += THINK_OPEN + "\n"
            opens = True
    return Prompt(text=text, opens_thinking=opens, add_bos=add_bos)


def _tool_json(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.schema},
    }


def continue_reply(messages: Sequence[Message], fmt: ChatFormat, *, tools: Sequence[Tool] = ()) -> Prompt:
    """A conversation whose last message is the assistant's start of a reply (a prefill, as OpenAI-style and
    Ollama clients send it): the text the model continues from that start.

    The start is written where the reply begins, as it is: one that opens with ``<think>`` continues the
    thinking (or, with its ``</think>``, the answer after it); one without the tags is the start of an answer,
    so the model writes no thinking before it."""
    *history, start = messages
    base = render(history, fmt, force_thinking=False, tools=tools)
    text = base.text
    if fmt.reasoning and text.rstrip().endswith(THINK_OPEN):  # the template opened the thinking itself
        text = text[: text.rstrip().rindex(THINK_OPEN)]
    text += start.content
    opened = THINK_OPEN in start.content and THINK_CLOSE not in start.content.rsplit(THINK_OPEN, 1)[1]
    return Prompt(text=text, opens_thinking=fmt.reasoning and opened, add_bos=base.add_bos)
