"""The chat app with a real model through llama.cpp, and the real command in a terminal (tmux)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import pytest

from localr1.cli.chat import real_loader
from localr1.conversations import ConversationStore
from localr1.tui.app import make_app
from localr1.tui.widgets import AssistantMessage, PromptInput

pytestmark = pytest.mark.integration


def test_chat_with_a_real_tiny_r1_model(tiny_r1, tmp_path):
    loader = real_loader(ctx=2048, gpu_layers=None, threads=None, sim=None, offline=True, debug=False, notice=print)
    from localr1.sampling import Sampling

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
    session = f"localr1-test-{os.getpid()}"
    env = {**os.environ, "LOCALR1_DATA_DIR": str(tmp_path / "data"), "TERM": "xterm-256color"}
    done = tmp_path / "exit-code"
    cmd = f"{sys.executable} -m localr1 chat {tiny_r1} --max-tokens 30 --ctx 2048; echo $? > {done}"
    # a server of its own: a tmux server already running (a developer's) would start the command with its
    # own environment, not this one, and the conversation would be saved in the developer's folder
    tmux = ["tmux", "-L", session]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], env=env, check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def wait_for(text: str, timeout: float = 30) -> str:
        end = time.time() + timeout
        while time.time() < end:
            shown = screen()
            if text in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared:\n{screen()}")

    try:
        wait_for("ctx 0/2,048")  # started, model loaded
        subprocess.run([*tmux, "send-keys", "-t", session, "Why is the sky blue?", "Enter"], check=True)
        wait_for("Cut off at the token limit")
        shown = wait_for("tok/s")  # the status line, once the "Loaded" notification is gone
        assert "Why is the sky blue?" in shown and "ctx " in shown
        subprocess.run([*tmux, "send-keys", "-t", session, "C-q"], check=True)
        end = time.time() + 15
        while not done.exists() and time.time() < end:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert list((tmp_path / "data" / "conversations").glob("*.json"))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_ctrl_q_while_the_model_generates_exits_cleanly(tiny_r1, tmp_path):
    """Ctrl+Q mid-reply segfaulted (exit 139): the model was freed while the worker thread still decoded.
    Now the generation stops, the conversation is saved and the process exits 0."""
    import json

    session = f"localr1-quit-{os.getpid()}"
    env = {**os.environ, "LOCALR1_DATA_DIR": str(tmp_path / "data"), "TERM": "xterm-256color"}
    done = tmp_path / "exit-code"
    cmd = f"{sys.executable} -m localr1 chat {tiny_r1} --ctx 16384; echo $? > {done}"
    tmux = ["tmux", "-L", session]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], env=env, check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    try:
        end = time.time() + 30
        while "ctx 0/16,384" not in screen() and time.time() < end:
            time.sleep(0.2)
        subprocess.run([*tmux, "send-keys", "-t", session, "Tell me a very long story.", "Enter"], check=True)
        end = time.time() + 30
        while "Thinking" not in screen() and time.time() < end:
            time.sleep(0.05)
        time.sleep(0.5)
        assert "Cut off" not in screen()  # still generating
        subprocess.run([*tmux, "send-keys", "-t", session, "C-q"], check=True)
        end = time.time() + 20
        while not done.exists() and time.time() < end:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    saved = [json.loads(p.read_text()) for p in (tmp_path / "data" / "conversations").glob("*.json")]
    assert saved and saved[0]["turns"][0]["user"] == "Tell me a very long story."
    assert saved[0]["turns"][0]["finish_reason"] == "cancelled" and saved[0]["turns"][0]["reasoning"]
