"""Hostile or broken input through the real CLI: each ends in one line and an exit code, never a crash
(134/139), a hang or "internal error" (the red-team report)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from catalogs import tiny_entry
from ggufs import write_gguf

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine
from localr1.errors import from_os_error


@pytest.fixture
def engine(monkeypatch):
    eng = FakeEngine([["<think>", "ok", "</think>", "fine"]])
    monkeypatch.setattr(loader_module, "load_engine", lambda path, header, options, cancel=None: eng)
    return eng


def _one_line(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and text in result.stderr.splitlines()[0], result.stderr


def _cli(args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "localr1", *args], capture_output=True, env=env, **kwargs)


def test_an_argument_that_is_not_utf8(isolated_dirs):
    proc = _cli([b"ask", b"caf\xe9 au lait"], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(b"Error: argument 2 is not valid UTF-8") and b"internal error" not in proc.stderr


def test_stdin_that_is_not_utf8(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "-", "-m", str(small_gguf)], input=b"hello \xff\xfe world")
    _one_line(result, 2, "stdin is not UTF-8 text (byte 6 is 0xff)")


def test_endless_stdin_is_bounded(small_gguf):
    """`yes | localr1 ask hi` used to read until memory ran out."""
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        proc = _cli(["ask", "hi", "-m", str(small_gguf)], stdin=yes.stdout, timeout=120)
    finally:
        yes.kill()
        yes.wait()
    assert proc.returncode == 2 and proc.stderr.startswith(b"Error: stdin holds more than 16 MiB")


def test_a_fifo_as_the_model_does_not_hang(runner, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    result = runner.invoke(app, ["ask", "hi", "-m", str(fifo)])
    _one_line(result, 1, "is not a regular file")


@pytest.mark.parametrize("value", ["65536", "0", "-3"])
def test_threads_are_bounded(runner, engine, small_gguf, value):
    result = runner.invoke(app, ["ask", "hi", "-m", str(small_gguf), "--threads", value])
    _one_line(result, 2, "--threads must be from 1 to")
    assert not engine.prompts  # refused before anything was loaded


@pytest.mark.parametrize("command", [["bench"], ["quantize", "x.gguf", "--to", "Q8_0"]])
def test_threads_are_bounded_everywhere(runner, command):
    result = runner.invoke(app, [*command, "--threads", "65536"])
    _one_line(result, 2, "--threads must be from 1 to")


@pytest.mark.parametrize(
    "setting, text",
    [
        ("threads = -3", "threads must be from 1 to"),
        ("ctx = 0", "ctx must be from 16"),
        ("gpu_layers = -9", "gpu_layers"),
    ],
)
def test_config_numbers_are_bounded(runner, engine, small_gguf, isolated_dirs, setting, text):
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config" / "config.toml").write_text(setting + "\n")
    result = runner.invoke(app, ["ask", "hi", "-m", str(small_gguf)])
    _one_line(result, 1, text)
    assert "config.toml" in result.stderr


def test_an_impossible_split_name(runner, tmp_path):
    path = write_gguf(tmp_path / "x-00001-of-00000.gguf")
    result = runner.invoke(app, ["ask", "hi", "-m", str(path)])
    _one_line(result, 1, "is named as part 1 of 0")


def test_a_models_folder_that_is_a_file(runner, isolated_dirs, monkeypatch, small_gguf):
    blocker = isolated_dirs / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LOCALR1_MODELS_DIR", str(blocker))
    assert runner.invoke(app, ["list"]).exit_code == 0
    result = runner.invoke(app, ["quantize", str(small_gguf), "--to", "Q8_0"])
    assert result.exit_code == 1 and "internal error" not in result.stderr, result.output


def test_a_catalog_that_is_not_utf8(runner, isolated_dirs):
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config" / "models.toml").write_bytes(b'[models."x"]\ntitle = "caf\xe9"\n')
    _one_line(runner.invoke(app, ["models"]), 1, "models.toml is not UTF-8 text")


HOSTILE_ENTRY = tiny_entry("evil:1b", "../../evil", {"Q8_0": "evil-Q8_0.gguf"})


def test_a_catalog_repo_with_dotdot(runner, isolated_dirs):
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config" / "models.toml").write_text(HOSTILE_ENTRY)
    _one_line(runner.invoke(app, ["models"]), 1, "gguf_repo '../../evil' must be 'owner/name'")


def test_a_broken_file_in_the_models_folder_does_not_stop_plan(runner, isolated_dirs, small_gguf):
    models = isolated_dirs / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 0, result.output
    assert "broken.gguf was left out" in result.stdout


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EEXIST])
def test_filesystem_errors_a_user_can_fix_are_one_line(runner, engine, small_gguf, monkeypatch, code):
    from localr1.cli import ask as ask_module

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), "/somewhere/out")

    monkeypatch.setattr(ask_module, "read_question", refuse)
    result = runner.invoke(app, ["ask", "hi", "-m", str(small_gguf)])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "/somewhere/out" in result.stderr
    assert "internal error" not in result.stderr and from_os_error(OSError(code, "x")) is not None
