"""``localr1 chat``: a Textual app where the thinking is live, collapsible and never in the way.

The app renders engine events and nothing else: the engine comes from a loader (the real one plans,
downloads and loads a GGUF; tests pass a fake), generation runs in a worker thread that posts each event
as a message, and Esc sets the same cancel event the CLI's Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar
from textual.worker import get_current_worker

from localr1.errors import LocalR1Error
from localr1.events import Answer, Done, Event, Reasoning
from localr1.text.conversations import Conversation, ConversationStore
from localr1.text.prompt import render
from localr1.text.reasoning import thought_summary
from localr1.text.sampling import Sampling
from localr1.tui.screens import ConversationList, HelpScreen, ModelPicker, PickerEntry, RenameScreen
from localr1.tui.widgets import AssistantMessage, PromptInput, StatusLine, ThinkingBlock, UserMessage

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.


class EngineLoader(Protocol):
    def __call__(self, spec: str | None, progress: Callable[[str, int, int], None]): ...


class EngineReady(Message):
    def __init__(self, engine, label: str) -> None:
        super().__init__()
        self.engine, self.label = engine, label


class EngineFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class DownloadProgress(Message):
    def __init__(self, name: str, done: int, total: int) -> None:
        super().__init__()
        self.name, self.done, self.total = name, done, total


@dataclass(frozen=True)
class PromptCounted:
    """The tokens of the prompt a reply starts from (posted before the engine's events)."""

    tokens: int


class Streamed(Message):
    def __init__(self, event: Event | PromptCounted) -> None:
        super().__init__()
        self.event = event


class StreamFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ChatApp(App):
    TITLE = "localr1"
    CSS = """
    #log { height: 1fr; padding: 0 1; }
    PromptInput { height: auto; max-height: 8; min-height: 3; border: round $accent; }
    #download { dock: top; height: 1; display: none; }
    """
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+t", "toggle_thinking", "Thinking"),
        Binding("ctrl+r", "hide_thinking", "Hide thinking", show=False),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+o", "conversations", "Chats"),
        Binding("ctrl+l", "pick_model", "Model"),
        Binding("f2", "copy_answer", "Copy", show=False),  # (Ctrl+Y and Ctrl+E belong to the input's editing)
        Binding("f3", "export", "Export", show=False),
        Binding("f1", "help", "Help"),
    ]

    def __init__(
        self,
        *,
        loader: EngineLoader,
        store: ConversationStore,
        picker_entries: Callable[[], list[PickerEntry]],
        spec: str | None = None,
        sampling: Sampling | None = None,
        hide_thinking: bool = False,
        clock: Callable[[], float] = time.monotonic,
        export_dir: Path | None = None,
        quit_on_signals: bool = False,
    ) -> None:
        super().__init__()
        self.quit_on_signals = quit_on_signals
        self.loader = loader
        self.store = store
        self.picker_entries = picker_entries
        self.spec = spec
        self.sampling = sampling or Sampling()
        self.hide_thinking = hide_thinking
        self.clock = clock
        self.export_dir = export_dir or Path.cwd()
        self.engine = None
        self.model_label = ""
        self.conversation = Conversation()
        self.generating = False
        self._cancel = threading.Event()
        self._ctx_used = 0  # while a reply streams: the prompt's tokens plus those generated so far
        self._view: AssistantMessage | None = None

    # --- layout -------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield ProgressBar(id="download", show_eta=True)
        yield VerticalScroll(id="log")
        yield PromptInput(id="prompt")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        self.set_interval(0.05, self._flush)
        self._load(self.spec)
        if self.quit_on_signals:
            self._handle_signals(install=True)

    def _handle_signals(self, *, install: bool) -> None:
        """The terminal closing (SIGHUP) or a polite kill (SIGTERM) quits as Ctrl+Q does: the reply stops, the
        conversation is saved, the model is freed in order. The handlers run in the event loop (asyncio's
        own signal handling), never inside whatever the main thread was doing when the signal came."""
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        handlers = {getattr(signal, "SIGHUP", None): self._hang_up, signal.SIGTERM: self.exit}
        for sig, handler in handlers.items():
            if sig is None:
                continue
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, or not main
                if install:
                    loop.add_signal_handler(sig, handler)
                else:
                    loop.remove_signal_handler(sig)

    def _hang_up(self) -> None:
        """The terminal is gone: save and free in order, then end the process. Textual's own shutdown would
        write to the dead terminal, and its writer thread, dead on the first failed write, can leave the
        shutdown waiting on a full queue for ever (the process outlived its terminal)."""
        import os

        self._stop_and_save()
        os._exit(0)

    def on_unmount(self) -> None:
        """Quitting (Ctrl+Q, or the terminal closing) mid-reply: stop the generation, keep what was said,
        then free the model (the engine waits for its generation thread to stop before it frees anything)."""
        if self.quit_on_signals:
            self._handle_signals(install=False)
        self._stop_and_save()

    def _stop_and_save(self) -> None:
        self._cancel.set()
        self.save_for_exit("cancelled")
        if self.engine is not None:
            self.engine.close()

    def save_for_exit(self, finish_reason: str) -> None:
        """Save the conversation with the reply in progress as far as it got (quitting, or the process about
        to end because a worker was lost: then called from llama.cpp's thread, with the engine left alone)."""
        if self.generating and self.conversation.turns and self._view is not None:
            turn = self.conversation.turns[-1]
            turn.answer = self._view.answer
            turn.reasoning = self._view.thinking.content if self._view.thinking else ""
            turn.finish_reason = finish_reason
            self.generating = False
        if self.conversation.turns:
            with contextlib.suppress(OSError):  # quitting: nowhere left to say so
                self.store.save(self.conversation)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def log_view(self) -> VerticalScroll:
        return self.query_one("#log", VerticalScroll)

    # --- the model ----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def _load(self, spec: str | None) -> None:
        self.call_from_thread(setattr, self.status, "model", f"loading {spec or 'the best model for this machine'}…")

        worker = get_current_worker()

        def progress(name: str, done: int, total: int) -> None:
            # Textual cancels this worker when the app quits or another model is chosen, but a thread runs
            # on: without this the download would go on (and keep the process alive) to its end. What was
            # downloaded is kept for the next try.
            if worker.is_cancelled:
                raise KeyboardInterrupt
            self.post_message(DownloadProgress(name, done, total))

        try:
            engine = self.loader(spec, progress)
        except LocalR1Error as exc:
            self.post_message(EngineFailed(exc.message + (f" — {exc.hint}" if exc.hint else "")))
            return
        except KeyboardInterrupt:
            return
        except Exception as exc:  # shown in the app, never a crash to the shell
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}"))
            return
        label = engine.info.name if spec is None else Path(spec).name if spec.endswith(".gguf") else spec
        self.post_message(EngineReady(engine, label))

    def on_engine_ready(self, message: EngineReady) -> None:
        old, self.engine = self.engine, message.engine
        if old is not None and old is not message.engine:
            old.close()
        info = message.engine.info
        self.model_label = message.label
        self.conversation.model = message.label
        self.query_one("#download").display = False
        self.status.model = f"{message.label} · {info.quant}"
        self.status.detail = f"ctx 0/{info.n_ctx:,}"
        self.notify(f"Loaded {message.label}", timeout=3)

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.query_one("#download").display = False
        self.status.model = "no model"
        self.notify(message.error, title="Could not load the model", severity="error", timeout=15)

    def on_download_progress(self, message: DownloadProgress) -> None:
        bar = self.query_one("#download", ProgressBar)
        bar.display = True
        bar.update(total=message.total or None, progress=message.done)
        self.status.model = f"downloading {message.name}…"

    # --- chatting -----------------------------------------------------------------------------------
    def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        if self.engine is None:
            self.notify("No model is loaded yet (Ctrl+L to choose one).", severity="warning")
            return
        if self.generating:
            self.notify("Still answering: wait, or press Esc to stop.", severity="warning")
            return
        self.conversation.add_turn(message.text)
        try:
            prompt = render(self.conversation.messages(), self.engine.info.chat_format)
        except LocalR1Error as exc:
            self.conversation.turns.pop()
            self.notify(exc.message, severity="error")
            return
        self.log_view.mount(UserMessage(message.text, markup=False))
        self._view = AssistantMessage(self.clock, self.hide_thinking)
        self.log_view.mount(self._view)
        self.log_view.scroll_end(animate=False)
        self._cancel = threading.Event()
        self.generating = True
        self._ctx_used = 0
        self._generate(prompt, self._cancel)

    @work(thread=True, group="generate")
    def _generate(self, prompt, cancel: threading.Event) -> None:
        try:
            # the context fills up as the model thinks: the status line shows it (see _flush)
            self.post_message(Streamed(PromptCounted(self.engine.count_tokens(prompt.text))))
            for event in self.engine.stream(prompt, self.sampling, cancel=cancel):
                self.post_message(Streamed(event))
        except LocalR1Error as exc:
            self.post_message(StreamFailed(exc.message))
        except Exception as exc:  # shown in the app, never a crash to the shell
            self.post_message(StreamFailed(f"{type(exc).__name__}: {exc}"))

    async def on_streamed(self, message: Streamed) -> None:
        view, event = self._view, message.event
        if view is None:
            return
        if isinstance(event, Reasoning):
            view.add_reasoning(event.text, event.tokens, event.forced)
            self._ctx_used += event.tokens
        elif isinstance(event, Answer):
            view.add_answer(event.text)
            self._ctx_used += event.tokens
        elif isinstance(event, PromptCounted):
            self._ctx_used += event.tokens
        elif isinstance(event, Done):
            await self._finish(view, event)
        self.log_view.scroll_end(animate=False)

    async def _finish(self, view: AssistantMessage, done: Done) -> None:
        if view.thinking is not None:
            view.thinking.finish(unfinished=done.reasoning_unfinished, tokens=done.usage.reasoning_tokens)
        await view.flush()
        turn = self.conversation.turns[-1]
        turn.answer = view.answer
        turn.reasoning = view.thinking.content if view.thinking else ""
        turn.thinking_s = view.thinking.elapsed if view.thinking else 0.0
        turn.finish_reason = done.finish_reason
        turn.tokens = done.usage.completion_tokens
        turn.reasoning_tokens = done.usage.reasoning_tokens if view.thinking else 0
        turn.decode_tps = done.timings.decode_tps
        if done.finish_reason == "cancelled":
            view.note("Stopped.")
        elif done.finish_reason == "length":
            view.note("Cut off at the token limit.")
        used = done.usage.prompt_tokens + done.usage.completion_tokens
        drafts = f" · {done.timings.drafts_kept}" if done.timings.drafts_kept else ""
        self.status.detail = f"ctx {used:,}/{self.engine.info.n_ctx:,} · {done.timings.decode_tps:.1f} tok/s{drafts}"
        self.generating = False
        try:
            self.store.save(self.conversation)
        except OSError as exc:
            self.notify(f"Could not save the conversation: {exc}", severity="error")

    def on_stream_failed(self, message: StreamFailed) -> None:
        self.generating = False
        if self.conversation.turns and not self.conversation.turns[-1].answer:
            self.conversation.turns.pop()
        self.notify(message.error, title="Generation failed", severity="error", timeout=15)

    async def _flush(self) -> None:
        if self._view is not None:
            await self._view.flush()
        if self.generating and self.engine is not None and self._ctx_used:
            self.status.detail = f"ctx {self._ctx_used:,}/{self.engine.info.n_ctx:,}"

    # --- actions ------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.generating:
            self._cancel.set()

    def _blocks(self) -> list[ThinkingBlock]:
        return list(self.query(ThinkingBlock))

    def action_toggle_thinking(self) -> None:
        blocks = self._blocks()
        expand = all(b.collapsed for b in blocks)
        for b in blocks:
            b.collapsed = not expand

    def action_hide_thinking(self) -> None:
        self.hide_thinking = not self.hide_thinking
        for view in self.query(AssistantMessage):
            view.hide_thinking = self.hide_thinking
        for b in self._blocks():
            b.display = not self.hide_thinking
        self.notify("Thinking hidden" if self.hide_thinking else "Thinking shown", timeout=2)

    async def action_new_chat(self) -> None:
        if self.generating:
            self._cancel.set()
        self.conversation = Conversation(model=self.model_label)
        self._view = None
        await self.log_view.remove_children()

    def action_copy_answer(self) -> None:
        answers = [t.answer for t in self.conversation.turns if t.answer]
        if not answers:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(answers[-1])
        self.notify("Copied the last answer.", timeout=2)

    def action_export(self) -> None:
        if not self.conversation.turns:
            self.notify("Nothing to export yet.", severity="warning")
            return
        self._export(self.conversation)

    def _export(self, conv: Conversation) -> None:
        slug = re.sub(r"[^\w-]+", "-", conv.title.lower()).strip("-")[:50] or "chat"
        path = self.export_dir / f"localr1-{slug}.md"
        try:
            path.write_text(conv.to_markdown(), encoding="utf-8")
        except OSError as exc:
            self.notify(f"Could not export: {exc}", severity="error")
            return
        self.notify(f"Exported to {path}", timeout=5)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_pick_model(self) -> None:
        try:
            entries = self.picker_entries()
        except LocalR1Error as exc:
            self.notify(exc.message, severity="error")
            return

        def chosen(spec: str | None) -> None:
            if spec:
                self._load(spec)

        self.push_screen(ModelPicker(entries), chosen)

    def action_conversations(self) -> None:
        def chosen(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            action, conv_id = result
            try:
                if action == "open":
                    self.call_later(self._open, self.store.load(conv_id))
                elif action == "delete":
                    self.store.delete(conv_id)
                    self.notify("Deleted.", timeout=2)
                elif action == "export":
                    self._export(self.store.load(conv_id))
                elif action == "rename":
                    current = self.store.load(conv_id)

                    def renamed(title: str | None) -> None:
                        if title:
                            self.store.rename(conv_id, title)
                            if self.conversation.id == conv_id:
                                self.conversation.title = title
                            self.notify(f"Renamed to {title}", timeout=2)

                    self.push_screen(RenameScreen(current.title), renamed)
            except LocalR1Error as exc:
                self.notify(exc.message, severity="error")

        self.push_screen(ConversationList(self.store.list()), chosen)

    async def _open(self, conv: Conversation) -> None:
        if self.generating:
            self._cancel.set()
        self.conversation = conv
        self._view = None
        await self.log_view.remove_children()
        for turn in conv.turns:
            await self.log_view.mount(UserMessage(turn.user, markup=False))
            view = AssistantMessage(self.clock, self.hide_thinking)
            await self.log_view.mount(view)
            if turn.reasoning:
                view.add_reasoning(turn.reasoning)
                view.thinking.finish()
                view.thinking.title = thought_summary(turn.thinking_s, turn.reasoning_tokens)
            view.add_answer(turn.answer)
            await view.flush()
        self.log_view.scroll_end(animate=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("New chat", "Start a new conversation (Ctrl+N)", self.action_new_chat)
        yield SystemCommand("Open a conversation", "Saved conversations (Ctrl+O)", self.action_conversations)
        yield SystemCommand("Choose a model", "Pick or download a model (Ctrl+L)", self.action_pick_model)
        yield SystemCommand("Stop", "Stop the reply (Esc)", self.action_stop)
        yield SystemCommand("Toggle thinking", "Expand or collapse all thinking (Ctrl+T)", self.action_toggle_thinking)
        yield SystemCommand("Hide thinking", "Hide or show thinking entirely (Ctrl+R)", self.action_hide_thinking)
        yield SystemCommand("Copy last answer", "To the clipboard (F2)", self.action_copy_answer)
        yield SystemCommand("Export chat", "As Markdown in the current folder (F3)", self.action_export)
        yield SystemCommand("Keys", "Show the keys (F1)", self.action_help)


def make_app(**kwargs) -> ChatApp:
    return ChatApp(**kwargs)
