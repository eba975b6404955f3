"""`localr1 serve` as users start it, and `ask --server` against it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from servers import running

from localr1.cli.app import app
from localr1.engine.fake import FakeEngine, fake_model_info
from localr1.server.run import is_loopback

SCRIPT = ["<think>\n", "Hmm, ", "2+2.", "</think>", "\n\n", "It is ", "4."]


def test_loopback_names():
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.5.0.1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.2", "::", "example.com"))


def test_binding_beyond_loopback_needs_a_key(runner, small_gguf):
    result = runner.invoke(app, ["serve", str(small_gguf), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without a key" in result.stderr and "--api-key" in result.stderr
    assert "Traceback" not in result.output


def test_a_port_in_use_is_one_line_before_loading(runner, small_gguf):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", str(small_gguf), "--port", str(port)])
        assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    finally:
        taken.close()


@pytest.mark.parametrize(("args", "fragment"), [(["--parallel", "0"], "--parallel"), (["--queue", "-1"], "--queue")])
def test_bad_numbers(runner, small_gguf, args, fragment):
    result = runner.invoke(app, ["serve", str(small_gguf), *args])
    assert result.exit_code == 2 and fragment in result.stderr


def test_ask_through_a_server(runner, monkeypatch):
    engine = FakeEngine([SCRIPT] * 3, info=fake_model_info("fake-r1"))
    with running(engine, "fake-r1") as server:
        result = runner.invoke(app, ["ask", "What is 2+2?", "--server", server.url, "--show-thinking", "--seed", "3"])
        assert result.exit_code == 0, result.output
        assert result.stdout == "It is 4.\n" and "Hmm, 2+2." in result.stderr
        # the prompt was built on this side with the server's template, exactly as `ask` builds it locally
        assert engine.prompts[-1].text.endswith("What is 2+2?<｜Assistant｜><think>\n")
        assert engine.samplings[-1].seed == 3 and engine.samplings[-1].temperature == 0.6
        monkeypatch.setenv("LOCALR1_SERVER", server.url.removeprefix("http://"))
        result = runner.invoke(app, ["ask", "What is 2+2?", "--json"])
        obj = json.loads(result.stdout)
        assert obj["content"] == "It is 4." and obj["reasoning_content"] == "Hmm, 2+2."
        assert obj["usage"]["reasoning_tokens"] == 4
        result = runner.invoke(app, ["ask", "hi", "--model", "r1:70b"])
        assert result.exit_code == 2 and "serves 'fake-r1', not 'r1:70b'" in result.stderr


def test_a_thinking_budget_through_a_server(runner):
    """ask --think-budget --server: the budget goes with the request, the server's engine applies it, and the
    report comes back (and with it eval works through a server)."""
    script = ["<think>\n", "one", " two", " three", "</think>", "\n\n", "Three."]
    engine = FakeEngine([script], info=fake_model_info("fake-r1"))
    with running(engine, "fake-r1") as server:
        result = runner.invoke(app, ["ask", "Count.", "--server", server.url, "--think-budget", "2", "--json"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert engine.samplings[-1].think_budget == 2
    assert obj["thinking_budget"]["cut"] is True and obj["thinking_budget"]["model_tokens"] == 2
    assert obj["content"] == "Three." and "three" not in obj["reasoning_content"]


def test_ask_with_no_server_listening(runner):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    result = runner.invoke(app, ["ask", "hi", "--server", f"127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert "cannot reach the localr1 server" in result.stderr and "localr1 serve" in result.stderr


@pytest.mark.integration
def test_serve_end_to_end_and_sigterm_drains(tiny_r1, tmp_path):
    """The real command: loads, serves both APIs, and on SIGTERM lets the request in flight finish, exit 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "localr1", "serve", str(tiny_r1), "--port", "0", "--ctx", "1024", "--parallel", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        url = f"http://127.0.0.1:{match[1]}"
        assert "2 x 1,024-token context" in line
        health = httpx.get(url + "/health").json()
        assert health["slots"] == 2 and health["context_per_request"] == 1024
        with httpx.stream(
            "POST", url + "/api/generate", json={"prompt": "hi", "options": {"num_predict": 150}}, timeout=60
        ) as response:
            lines = response.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert json.loads(first)["thinking"]
        assert json.loads(rest[-1])["done"] and json.loads(rest[-1])["eval_count"] == 150  # drained, not cut
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
        assert "POST /api/generate 200" in log and log.rstrip().endswith("Stopped.")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serve_opens_the_model_for_its_slots(runner, small_gguf, monkeypatch):
    """--parallel reaches the loader as sequences of --ctx tokens each; the app serves the loaded engine."""
    from localr1 import loader as loader_module
    from localr1.server import run as run_module

    seen = {}

    def load(path, header, options, cancel=None):
        seen["options"] = options
        seen["engine"] = FakeEngine(info=fake_model_info("fake-r1", n_ctx=options.n_ctx))
        return seen["engine"]

    def fake_serve(app, sock, **kwargs):
        seen["port"] = sock.getsockname()[1]
        kwargs["on_started"]()

    monkeypatch.setattr(loader_module, "load_engine", load)
    monkeypatch.setattr(run_module, "serve", fake_serve)
    result = runner.invoke(app, ["serve", str(small_gguf), "--parallel", "3", "--ctx", "2048", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert (seen["options"].n_seq, seen["options"].n_ctx) == (3, 2048)
    assert f"at http://127.0.0.1:{seen['port']}" in result.stderr and result.stderr.rstrip().endswith("Stopped.")
    assert seen["engine"].closed


def test_chat_through_a_server(runner, monkeypatch):
    """chat --server: the app gets the server's engine and a picker holding only the served model."""
    from localr1.cli import chat as chat_module
    from localr1.tui import app as tui_app

    made = {}

    class App:
        def run(self):
            made["engine"] = made["loader"](None, None)
            made["entries"] = made["picker_entries"]()

    def make_app(**kwargs):
        made.update(kwargs)
        return App()

    monkeypatch.setattr(chat_module, "is_terminal", lambda: True)
    monkeypatch.setattr(tui_app, "make_app", make_app)
    engine = FakeEngine([SCRIPT], info=fake_model_info("fake-r1"))
    with running(engine, "fake-r1") as server:
        result = runner.invoke(app, ["chat", "--server", server.url])
        assert result.exit_code == 0, result.output
        assert made["spec"] == "fake-r1" and made["engine"].info.name == "fake-r1"
        assert [e.spec for e in made["entries"]] == ["fake-r1"]
        events = list(made["engine"].stream(_prompt(made["engine"]), _sampling()))
        assert "".join(e.text for e in events[:-1] if type(e).__name__ == "Answer") == "It is 4."


def _prompt(engine):
    from localr1.text.prompt import render, user_turn

    return render(user_turn("hi"), engine.info.chat_format)


def _sampling():
    from localr1.text.sampling import Sampling

    return Sampling()
