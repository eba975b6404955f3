"""The pieces of the chat screen: messages, the thinking block, the prompt input, the status line."""

from __future__ import annotations

import re
from collections.abc import Callable

from textual import events
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Collapsible, Markdown, Static, TextArea

from localr1.text.reasoning import thought_summary

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

_BOXED = re.compile(r"\\boxed\{")


def highlight_boxed(text: str) -> str:
    r"""Make ``\boxed{...}`` stand out in Markdown (braces balanced; an unclosed one is left as it is)."""
    out, i = [], 0
    for m in _BOXED.finditer(text):
        if m.start() < i:
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            break  # still streaming: the closing brace has not arrived
        out.append(text[i : m.start()])
        out.append(f" **⟦ {text[m.end() : j - 1]} ⟧** ")
        i = j
    out.append(text[i:])
    return "".join(out)


class UserMessage(Static):
    DEFAULT_CSS = """
    UserMessage { background: $boost; padding: 0 1; margin: 1 0 0 0; border-left: thick $accent; }
    """


class ThinkingBlock(Collapsible):
    """The model's reasoning: live while it thinks, then collapsed to one line."""

    DEFAULT_CSS = """
    ThinkingBlock { border: none; padding: 0; margin: 0; background: transparent; }
    ThinkingBlock Static.reasoning { color: $text-muted; text-style: italic; padding: 0 0 0 2; }
    """

    def __init__(self, clock: Callable[[], float], **kwargs) -> None:
        self._text = Static("", classes="reasoning", markup=False)
        super().__init__(self._text, title="Thinking…", collapsed=False, **kwargs)
        self._clock = clock
        self._started = clock()
        self.content = ""
        self.forced: list[str] = []  # the thinking budget's parts of the content
        self.tokens = 0
        self.done = False
        self.elapsed = 0.0
        self._timer = None

    def on_mount(self) -> None:
        if not self.done:  # a fast reply may have finished it before it was mounted
            self._timer = self.set_interval(0.1, self._tick)

    def _tick(self) -> None:
        if not self.done:
            count = f" · {self.tokens:,} tokens" if self.tokens else ""
            self.title = f"Thinking… {self._clock() - self._started:.1f} s{count}"

    def add(self, text: str, tokens: int = 0, forced: bool = False) -> None:
        """``forced``: text a thinking budget appended (not the model's), shown apart: "[budget] ..."."""
        if forced:
            lead = text[: len(text) - len(text.lstrip())]
            text = f"{lead}[budget] {text.strip()}"
            self.forced.append(text)
        self.content += text
        self.tokens += tokens
        if self.forced:
            from rich.text import Text

            styled = Text(self.content)
            for part in self.forced:
                start = self.content.find(part)
                if start >= 0:
                    styled.stylize("bold yellow not italic", start, start + len(part))
            self._text.update(styled)
        else:
            self._text.update(self.content)

    def finish(self, *, collapse: bool = True, unfinished: bool = False, tokens: int | None = None) -> None:
        """Fold to one line; ``tokens`` is the exact count (the engine's usage) where it is known."""
        if self.done:
            return
        self.done = True
        self.elapsed = self._clock() - self._started
        if tokens is not None:
            self.tokens = tokens
        if self._timer is not None:
            self._timer.stop()
        self.title = thought_summary(self.elapsed, self.tokens, unfinished=unfinished)
        if self.forced:
            self.title += " · thinking budget applied"
        if collapse:
            self.collapsed = True


class AssistantMessage(Vertical):
    """One reply: a thinking block (if the model thinks) and the answer, rendered as Markdown."""

    DEFAULT_CSS = """
    AssistantMessage { height: auto; margin: 1 0 0 0; }
    AssistantMessage Markdown { margin: 0; padding: 0 1; }
    AssistantMessage .status { color: $text-muted; padding: 0 1; }
    """

    def __init__(self, clock: Callable[[], float], hide_thinking: bool) -> None:
        super().__init__()
        self._clock = clock
        self.hide_thinking = hide_thinking
        self.thinking: ThinkingBlock | None = None
        self.answer = ""
        self.markdown = Markdown("")
        self._dirty = False

    def compose(self):
        yield self.markdown

    def add_reasoning(self, text: str, tokens: int = 0, forced: bool = False) -> None:
        if self.thinking is None:
            self.thinking = ThinkingBlock(self._clock)
            self.thinking.display = not self.hide_thinking
            self.mount(self.thinking, before=self.markdown)
        self.thinking.add(text, tokens, forced)

    def add_answer(self, text: str) -> None:
        if self.thinking is not None and not self.thinking.done:
            self.thinking.finish()
        self.answer += text
        self._dirty = True

    async def flush(self) -> None:
        """Re-render the answer (called on a short timer, not per token)."""
        if self._dirty:
            self._dirty = False
            await self.markdown.update(highlight_boxed(self.answer))

    def note(self, text: str) -> None:
        self.mount(Static(text, classes="status", markup=False))


class PromptInput(TextArea):
    """Multi-line input: Enter sends, Ctrl+J inserts a new line."""

    BINDINGS = [Binding("ctrl+j", "newline", "New line", show=False)]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text.strip()
            if text:
                self.post_message(self.Submitted(text))
                self.clear()
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        self.insert("\n")


class StatusLine(Static):
    """model · quant · context used / size · tokens/s"""

    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    model = reactive("no model")
    detail = reactive("")

    def render(self) -> str:
        return f"{self.model}  {self.detail}".rstrip()
