"""The chat app with a real model through llama.cpp, and the real command in a terminal (tmux)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import pytest
from tmux_chat import TmuxChat

from localr1.cli.chat import real_loader
from localr1.text.conversations import ConversationStore
from localr1.tui.app import make_app
from localr1.tui.widgets import AssistantMessage, PromptInput

pytestmark = pytest.mark.integration


def test_chat_with_a_real_tiny_r1_model(tiny_r1, tmp_path):
    from localr1.fit.request import LoadRequest

    loader = real_loader(LoadRequest(ctx=2048, offline=True), print)
    from localr1.text.sampling import Sampling

    app = make_app(
        loader=loader,
        store=ConversationStore(tmp_path),
        picker_entries=list,
        spec=str(tiny_r1),
        sampling=Sampling(seed=3, max_tokens=40),
        export_dir=tmp_path,
    )

    async def scenario():
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.engine is not None:
                    break
            assert app.engine is not None and app.engine.info.n_ctx == 2048
            await pilot.click(PromptInput)
            await pilot.press("h", "i", "enter")
            for _ in range(200):
                await pilot.pause(0.05)
                if app.conversation.turns and app.conversation.turns[-1].finish_reason:
                    break
            turn = app.conversation.turns[-1]
            assert turn.finish_reason == "length" and turn.tokens == 40
            view = app.query_one(AssistantMessage)
            assert view.thinking is not None and view.thinking.content == turn.reasoning and turn.reasoning

    asyncio.run(scenario())
    assert ConversationStore(tmp_path).list()[0].turns[0].user == "hi"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_localr1_chat_in_a_terminal(tiny_r1, tmp_path):
    chat = TmuxChat(tmp_path, f"{tiny_r1} --max-tokens 30 --ctx 2048")
    try:
        chat.wait_for("ctx 0/2,048")  # started, model loaded
        chat.send("Why is the sky blue?", "Enter")
        chat.wait_for("Cut off at the token limit")
        shown = chat.wait_for("tok/s")  # the status line, once the "Loaded" notification is gone
        assert "Why is the sky blue?" in shown and "ctx " in shown
        chat.send("C-q")
        assert chat.exit_code(15) == "0"
    finally:
        chat.close()
    assert list((tmp_path / "data" / "conversations").glob("*.json"))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_ctrl_q_while_the_model_generates_exits_cleanly(tiny_r1, tmp_path):
    """Ctrl+Q mid-reply segfaulted (exit 139): the model was freed while the worker thread still decoded.
    Now the generation stops, the conversation is saved and the process exits 0."""
    import json

    chat = TmuxChat(tmp_path, f"{tiny_r1} --ctx 4096")
    try:
        done_before = chat.start_long_reply()
        chat.send("C-q")
        assert chat.exit_code() == "0"
    finally:
        chat.close()
    saved = [json.loads(p.read_text()) for p in (tmp_path / "data" / "conversations").glob("*.json")]
    assert saved and saved[0]["turns"][0]["user"] == "Tell me a very long story."
    turn = saved[0]["turns"][0]
    # (random weights may also end the reply between the last look at the screen and Ctrl+Q: on a loaded
    # machine that window is wide, so a reply that ended by itself, "stop", passes too; "length" would not)
    assert turn["reasoning"] and turn["finish_reason"] in (("stop", "cancelled") if not done_before else ("stop",))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_closing_the_terminal_mid_reply_saves_and_exits(tiny_r1, tmp_path):
    """The terminal closing (SIGHUP) while the model generates quits as Ctrl+Q does: the reply stops, the
    conversation is saved, and the process ends (it died mid-decode before, with the turn lost)."""
    import json

    chat = TmuxChat(tmp_path, f"{tiny_r1} --ctx 4096")
    try:
        done_before = chat.start_long_reply()
        pids = subprocess.run(["pgrep", "-f", f"localr1 chat {tiny_r1}"], capture_output=True, text=True).stdout.split()
    finally:
        chat.close()  # the terminal goes away
    folder = tmp_path / "data" / "conversations"
    end = time.time() + 20
    while not list(folder.glob("*.json")) and time.time() < end:
        time.sleep(0.2)
    saved = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert saved and (done_before or saved[0]["turns"][0]["finish_reason"] == "cancelled")
    end = time.time() + 20
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.time() < end:
        time.sleep(0.2)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
