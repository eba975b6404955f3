"""The chat app through Textual's Pilot, with the scripted engine: every action a user has."""

from __future__ import annotations

import asyncio
import re

from tui_support import R1_REPLY

from localr1.errors import ModelLoadError
from localr1.tui.screens import ConversationList, HelpScreen, ModelPicker, RenameScreen
from localr1.tui.widgets import AssistantMessage, PromptInput, ThinkingBlock, UserMessage, highlight_boxed


async def settle(pilot, app, timeout: float = 5.0) -> None:
    """Wait until the reply is complete."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    await pilot.pause(0.05)
    while app.generating and loop.time() < end:
        await pilot.pause(0.02)
    await pilot.pause(0.1)


async def send(pilot, app, text: str) -> None:
    await pilot.click(PromptInput)
    for ch in text:
        await pilot.press("space" if ch == " " else ch)
    await pilot.press("enter")
    await settle(pilot, app)


def run(coro):
    return asyncio.run(coro)


async def start_reply(pilot, app, *keys: str) -> None:
    """Type ``keys`` and Enter once the model is loaded, and return while the reply is still streaming."""
    await pilot.pause(0.2)
    await pilot.click(PromptInput)
    await pilot.press(*keys, "enter")
    await pilot.pause(0.3)
    assert app.generating


def test_send_streams_thinking_then_answer(build):
    async def scenario():
        app, engine, calls = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            assert calls == ["fake-r1"] and app.engine is engine
            await send(pilot, app, "what is 2+2?")
            view = app.query_one(AssistantMessage)
            assert view.thinking.content == "Let me think about it."
            assert view.answer == "The answer is \\boxed{4}."
            assert view.thinking.collapsed and view.thinking.title.startswith("Thought for")
            assert "Let me think" not in view.answer
            turn = app.conversation.turns[0]
            assert (turn.user, turn.reasoning, turn.answer) == ("what is 2+2?", "Let me think about it.", view.answer)
            assert app.conversation.title == "what is 2+2?"
            assert "ctx" in app.status.detail and "tok/s" in app.status.detail
            assert app.query_one(UserMessage)
            assert app.store.list()[0].id == app.conversation.id  # saved after the turn

    run(scenario())


def test_live_timer_while_thinking(build, clock):
    async def scenario():
        app, engine, _ = build([["<think>\n", "slow", " thoughts"] + [" more"] * 200], delay=0.02)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.click(PromptInput)
            await pilot.press("h", "i", "enter")
            await pilot.pause(0.3)
            block = app.query_one(ThinkingBlock)
            assert not block.collapsed and not block.done
            clock.now += 3.5
            await pilot.pause(0.25)
            shown = re.fullmatch(r"Thinking… 3\.5 s · (\d+) tokens", str(block.title))  # redrawn every 0.1 s
            assert shown and 2 < int(shown[1]) <= block.tokens
            # the context fills up while it thinks: the prompt plus the tokens so far, redrawn every 50 ms
            before = re.fullmatch(r"ctx (\d+)/4,096", app.status.detail)
            await pilot.pause(0.2)
            after = re.fullmatch(r"ctx (\d+)/4,096", app.status.detail)
            assert before and after and int(after[1]) > int(before[1]) > 2
            await pilot.press("escape")
            await settle(pilot, app)
            turn = app.conversation.turns[-1]
            assert turn.reasoning_tokens >= block.tokens - 1  # the engine's exact count replaces the live one
            assert block.title == f"Stopped thinking after 3.5 s ({turn.reasoning_tokens} tokens)"

    run(scenario())


def test_escape_stops_at_once_and_keeps_what_was_written(build):
    async def scenario():
        app, engine, _ = build([["</think>", "Partial"] + [" word"] * 500], delay=0.01)
        async with app.run_test(size=(100, 30)) as pilot:
            await start_reply(pilot, app, "g", "o")
            await pilot.press("escape")
            await settle(pilot, app)
            assert not app.generating
            turn = app.conversation.turns[0]
            assert turn.finish_reason == "cancelled"
            assert turn.answer.startswith("Partial word") and len(turn.answer.split()) < 400

    run(scenario())


def test_toggle_all_and_click_to_expand(build):
    async def scenario():
        app, _, _ = build([R1_REPLY, R1_REPLY])
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "one")
            await send(pilot, app, "two")
            blocks = list(app.query(ThinkingBlock))
            assert len(blocks) == 2 and all(b.collapsed for b in blocks)
            await pilot.press("ctrl+t")
            await pilot.pause(0.1)
            assert not any(b.collapsed for b in blocks)
            await pilot.press("ctrl+t")
            await pilot.pause(0.1)
            assert all(b.collapsed for b in blocks)
            await pilot.click(blocks[0].query_one("CollapsibleTitle"))
            await pilot.pause(0.1)
            assert not blocks[0].collapsed and blocks[1].collapsed

    run(scenario())


def test_hide_thinking_setting(build):
    async def scenario():
        app, _, _ = build([R1_REPLY, R1_REPLY], hide_thinking=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "one")
            block = app.query_one(ThinkingBlock)
            assert not block.display
            await pilot.press("ctrl+r")
            await pilot.pause(0.1)
            assert block.display
            await pilot.press("ctrl+r")
            await send(pilot, app, "two")
            assert not any(b.display for b in app.query(ThinkingBlock))

    run(scenario())


def test_earlier_thinking_is_not_sent_back(build):
    async def scenario():
        app, engine, _ = build([R1_REPLY, R1_REPLY])
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "first")
            await send(pilot, app, "second")
            second = engine.prompts[1].text
            assert "first" in second and "The answer is \\boxed{4}." in second
            assert "Let me think" not in second
            assert len(app.query(ThinkingBlock)) == 2  # but both stay on screen

    run(scenario())


def test_multiline_input(build):
    async def scenario():
        app, engine, _ = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.click(PromptInput)
            await pilot.press("a", "ctrl+j", "b", "enter")
            await settle(pilot, app)
            assert app.conversation.turns[0].user == "a\nb"

    run(scenario())


def test_new_chat_and_reopen_saved(build):
    async def scenario():
        app, _, _ = build([R1_REPLY, R1_REPLY])
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "remember me")
            first_id = app.conversation.id
            await pilot.press("ctrl+n")
            await pilot.pause(0.1)
            assert app.conversation.id != first_id and not app.query(AssistantMessage)
            await pilot.press("ctrl+o")
            await pilot.pause(0.1)
            assert isinstance(app.screen, ConversationList)
            await pilot.press("enter")
            await pilot.pause(0.3)
            assert app.conversation.id == first_id
            view = app.query_one(AssistantMessage)
            assert view.answer == "The answer is \\boxed{4}." and view.thinking.collapsed
            assert view.thinking.title == "Thought for 0.0 s (6 tokens)"  # saved with the chat

    run(scenario())


def test_rename_delete_and_export(build, tmp_path):
    async def scenario():
        app, _, _ = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "to be renamed")
            conv_id = app.conversation.id
            await pilot.press("ctrl+o", "r")
            await pilot.pause(0.1)
            assert isinstance(app.screen, RenameScreen)
            await pilot.press("ctrl+a", "backspace")  # select all, then type over it
            app.screen.query_one("Input").value = "Renamed chat"
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert app.store.load(conv_id).title == "Renamed chat" and app.conversation.title == "Renamed chat"
            await pilot.press("ctrl+o", "e")
            await pilot.pause(0.1)
            exported = tmp_path / "localr1-renamed-chat.md"
            text = exported.read_text()
            assert text.startswith("# Renamed chat") and "## You\n\nto be renamed" in text
            assert "<summary>Thought for 0.0 s (6 tokens)</summary>" in text
            await pilot.press("ctrl+o", "d")
            await pilot.pause(0.1)
            assert app.store.list() == []

    run(scenario())


def test_export_current_chat(build, tmp_path):
    async def scenario():
        app, _, _ = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("f3")  # nothing yet: a warning, no file
            await send(pilot, app, "export me")
            await pilot.press("f3")
            await pilot.pause(0.1)
            assert (tmp_path / "localr1-export-me.md").exists()

    run(scenario())


def test_copy_last_answer(build):
    async def scenario():
        app, _, _ = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "q")
            await pilot.press("f2")
            await pilot.pause(0.05)
            assert app.clipboard == "The answer is \\boxed{4}."

    run(scenario())


def test_model_picker_loads_the_choice(build):
    async def scenario():
        app, _, calls = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("ctrl+l")
            await pilot.pause(0.1)
            assert isinstance(app.screen, ModelPicker)
            await pilot.press("enter")
            await pilot.pause(0.3)
            assert calls == ["fake-r1", "r1:7b:Q4_K_M"]
            assert app.model_label == "r1:7b:Q4_K_M"

    run(scenario())


def test_download_progress_inside_the_app(build):
    async def scenario():
        from localr1.engine.fake import FakeEngine

        seen = []

        def loader(spec, progress):
            import time

            for done in (0, 50, 100):
                progress("model.gguf", done, 100)
                time.sleep(0.05)
            seen.append(spec)
            return FakeEngine()

        app, _, _ = build(loader=loader)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.05)
            bar = app.query_one("#download")
            for _ in range(20):
                if bar.display:
                    break
                await pilot.pause(0.01)
            assert bar.display and "downloading model.gguf" in app.status.model
            await pilot.pause(0.4)
            assert seen and not bar.display and bar.progress == 100

    run(scenario())


def test_load_failure_is_a_notification_not_a_crash(build):
    async def scenario():
        def loader(spec, progress):
            raise ModelLoadError("llama.cpp could not load x.gguf: out of memory", hint="Try a smaller quant.")

        app, _, _ = build(loader=loader)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            assert app.engine is None and app.status.model == "no model"
            messages = [n.message for n in app._notifications]
            assert any("out of memory" in m and "smaller quant" in m for m in messages)
            await pilot.click(PromptInput)
            await pilot.press("x", "enter")
            await pilot.pause(0.1)
            assert not app.conversation.turns  # nothing sent without a model

    run(scenario())


def test_generation_failure_is_a_notification(build):
    async def scenario():
        app, engine, _ = build()

        def broken(prompt, sampling, cancel=None):
            raise RuntimeError("GPU fell off the bus")
            yield  # pragma: no cover

        engine.stream = broken
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "q")
            assert not app.generating and not app.conversation.turns
            assert any("GPU fell off the bus" in n.message for n in app._notifications)

    run(scenario())


def test_help_and_command_palette(build):
    async def scenario():
        app, _, _ = build()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("f1")
            await pilot.pause(0.1)
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for wanted in ("New chat", "Open a conversation", "Choose a model", "Stop", "Toggle thinking",
                           "Hide thinking", "Copy last answer", "Export chat", "Keys"):  # fmt: skip
                assert wanted in titles

    run(scenario())


def test_highlight_boxed():
    assert highlight_boxed("so \\boxed{x^{2}} done") == "so  **⟦ x^{2} ⟧**  done"
    assert highlight_boxed("open \\boxed{x^{2") == "open \\boxed{x^{2"  # still streaming
    assert highlight_boxed("none") == "none"


def test_quitting_during_a_download_stops_it(build):
    """The download runs in a thread worker: quitting cancels the worker, and the next chunk stops it
    (otherwise the process would stay alive until a many-gigabyte download had finished)."""
    import threading

    stopped = threading.Event()

    def loader(spec, progress):
        import time

        try:
            for done in range(300):  # 3 s: far longer than the test takes when the download stops
                progress("model.gguf", done, 300)
                time.sleep(0.01)
        except KeyboardInterrupt:
            stopped.set()
            raise
        raise AssertionError("the download was never stopped")

    async def scenario():
        app, _, _ = build(loader=loader)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            assert app.query_one("#download").display
            await pilot.press("ctrl+q")

    run(scenario())
    assert stopped.is_set()


def test_quitting_mid_reply_stops_saves_and_frees_in_order(build):
    """Ctrl+Q while the model generates: the generation stops, what was said is saved, and the model is
    freed only after the generation thread let go of it (freeing under it was a segfault)."""

    async def scenario():
        app, engine, _ = build([["<think>\n", "thinking"] + [" on"] * 400], delay=0.01)
        async with app.run_test(size=(100, 30)) as pilot:
            await start_reply(pilot, app, "h", "i")
            await pilot.press("ctrl+q")
            await pilot.pause(0.2)
        assert engine.closed and not engine.used_after_close
        saved = app.store.list()
        assert len(saved) == 1 and saved[0].turns[0].user == "hi"
        assert saved[0].turns[0].reasoning.startswith("thinking on") and saved[0].turns[0].finish_reason == "cancelled"

    run(scenario())


def test_damaged_saved_conversations_are_skipped_in_the_list(build, tmp_path):
    """Every file the app reads back can be corrupt: a wrong type, a duplicated id, not JSON at all."""
    import json
    import uuid

    async def scenario():
        app, _, _ = build([R1_REPLY])
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "keep me")
            good = app.conversation.id
            folder = app.store.root
            original = json.loads((folder / f"{good}.json").read_text())
            (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps(original))  # the same id inside
            (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps({**original, "updated": "yesterday"}))
            (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps({**original, "turns": "nope"}))
            (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps([1, 2, 3]))
            (folder / f"{uuid.uuid4().hex}.json").write_bytes(b"\xff\xfe{")
            await pilot.press("ctrl+o")
            await pilot.pause(0.2)
            assert isinstance(app.screen, ConversationList)
            ids = [c.id for c in app.store.list()]
            assert len(ids) == len(set(ids)) == 2 and good in ids  # the copy is listed under its own name

    run(scenario())


def test_a_thinking_budgets_words_are_shown_as_not_the_models(build):
    from localr1.text.sampling import Sampling

    script = ["<think>\n", "one", " two", " three", "</think>", "\n\n", "Done."]

    async def scenario():
        app, engine, calls = build([script], sampling=Sampling(think_budget=2))
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "count")
            view = app.query_one(AssistantMessage)
            assert view.thinking.forced == [
                "\n\n[budget] Considering the limited time, I have to give the solution now."
            ]
            # the script's "<think>" piece and "one" are the two thinking tokens; nothing of the model's follows the cut
            assert view.thinking.content.startswith("one\n") and "two" not in view.thinking.content
            assert view.thinking.title.endswith("· thinking budget applied") and view.answer == "Done."

    run(scenario())


def test_the_status_line_shows_what_speculation_kept(build):
    from localr1.engine.speculative import DraftStats
    from localr1.events import Timings

    async def scenario():
        app, engine, _ = build()
        engine.timings = Timings(decode_s=1.0, decode_tokens=11, speculative=DraftStats("ngram", 40, 30))
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.pause(0.2)
            await send(pilot, app, "hi")
            assert app.status.detail.endswith("10.0 tok/s · 75% of 40 drafts kept"), app.status.detail

    run(scenario())
