"""Modal screens: model picker, saved conversations, rename, help."""

from __future__ import annotations

import time
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from localr1.text.conversations import Conversation

MODAL_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 90%; max-width: 110; height: auto; max-height: 85%; border: round $accent;
    background: $surface; padding: 0 1; }}
{name} .hint {{ color: $text-muted; }}
"""


@dataclass(frozen=True)
class PickerEntry:
    spec: str  # what to load: a catalog name:quant, or a file path
    label: str  # shown in the list
    downloaded: bool
    fits: bool


class ModelPicker(ModalScreen[str | None]):
    DEFAULT_CSS = MODAL_CSS.format(name="ModelPicker")
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, entries: list[PickerEntry]) -> None:
        super().__init__()
        self.entries = entries

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Choose a model[/b] — ✓ on disk, ↓ downloaded first")
            options = [
                Option(f"{'✓' if e.downloaded else '↓'} {e.label}", id=str(i), disabled=not e.fits)
                for i, e in enumerate(self.entries)
            ]
            yield OptionList(*options, id="models")
            yield Static("Enter: use · Esc: close", classes="hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.entries[int(event.option.id)].spec)


class ConversationList(ModalScreen[tuple[str, str] | None]):
    """Saved conversations; the result is (action, conversation id)."""

    DEFAULT_CSS = MODAL_CSS.format(name="ConversationList")
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("r", "act('rename')", "Rename"),
        Binding("d", "act('delete')", "Delete"),
        Binding("e", "act('export')", "Export"),
    ]

    def __init__(self, conversations: list[Conversation]) -> None:
        super().__init__()
        self.conversations = conversations

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Conversations[/b]")
            if not self.conversations:
                yield Static("No saved conversations yet.", classes="hint")
            options = []
            for c in self.conversations:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated))
                options.append(Option(f"{c.title}  ·  {len(c.turns)} turns  ·  {c.model or '?'}  ·  {when}", id=c.id))
            yield OptionList(*options, id="conversations")
            yield Static("Enter: open · r: rename · d: delete · e: export to Markdown · Esc: close", classes="hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(("open", event.option.id))

    def action_act(self, action: str) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return
        self.dismiss((action, options.get_option_at_index(options.highlighted).id))


class RenameScreen(ModalScreen[str | None]):
    DEFAULT_CSS = MODAL_CSS.format(name="RenameScreen")
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.current = title

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Rename conversation[/b]")
            yield Input(value=self.current, id="title")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


HELP = """\
[b]Keys[/b]

  Enter        send the message           Ctrl+J   new line in the message
  Esc          stop the reply             Ctrl+T   expand / collapse all thinking
  Ctrl+R       hide / show thinking       Ctrl+N   new chat
  Ctrl+O       saved conversations        Ctrl+L   choose a model
  F2           copy the last answer       F3       export this chat to Markdown
  Ctrl+P       command palette            F1       this help
  Ctrl+Q       quit

Click a "Thought for …" line to open that thinking. Earlier thinking stays on screen but is
never sent back to the model (DeepSeek's advice).
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = MODAL_CSS.format(name="HelpScreen")
    BINDINGS = [Binding("escape", "dismiss(None)", "Close"), Binding("f1", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(HELP)
