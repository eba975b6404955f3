"""`localr1 chat` driven in a real terminal: a tmux server of its own (tests/tui, tests/vulkan)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


class TmuxChat:
    """``localr1 chat`` running in a tmux server of its own (a developer's running server would start the
    command with its own environment, not this one, and the conversation would be saved in their folder)."""

    def __init__(self, tmp_path, args: str, env: dict | None = None, *, hold: bool = False) -> None:
        """``hold``: the terminal stays open after chat exits, to read what it left on the screen."""
        self.session = f"localr1-test-{os.getpid()}-{id(self)}"
        self.tmux = ["tmux", "-L", self.session]
        self.done = tmp_path / "exit-code"
        env = {**(env or os.environ), "LOCALR1_DATA_DIR": str(tmp_path / "data"), "TERM": "xterm-256color"}
        cmd = f"{sys.executable} -m localr1 chat {args}; echo $? > {self.done}" + ("; sleep 120" if hold else "")
        size = ["-x", "100", "-y", "30"]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.session, *size, cmd], env=env, check=True)

    def screen(self) -> str:
        return subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", self.session], capture_output=True, text=True
        ).stdout

    def wait_for(self, text: str, timeout: float = 30) -> str:
        end = time.time() + timeout
        while time.time() < end:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")

    def send(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.session, *keys], check=True)

    def exit_code(self, timeout: float = 20) -> str:
        end = time.time() + timeout
        while not self.done.exists() and time.time() < end:
            time.sleep(0.2)
        return self.done.read_text().strip()

    def start_long_reply(self) -> bool:
        """Ask for a long story once the model is loaded; True if the reply ended already (random weights may
        end it early, and then there is nothing left to stop)."""
        self.wait_for("ctx 0/4,096")
        self.send("Tell me a very long story.", "Enter")
        self.wait_for("Thinking")
        # some thinking streamed (on a loaded machine "Thinking" shows well before the first token)
        end = time.time() + 30
        while time.time() < end and not re.search(r"· [1-9]\d* tokens?|tok/s", self.screen()):
            time.sleep(0.05)
        time.sleep(0.2)
        return "tok/s" in self.screen()

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)
