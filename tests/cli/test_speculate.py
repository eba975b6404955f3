"""--speculate and --draft on the commands: the options reach the engine, a bad one is one line, and a
real speculative ask writes what plain decoding writes and says what it drafted."""

from __future__ import annotations

import json

import pytest

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine


@pytest.fixture
def captured(monkeypatch):
    """The EngineOptions each load asked for (a scripted engine answers)."""
    seen = []

    def load(path, header, options, cancel=None):
        seen.append(options)
        return FakeEngine([["<think>\n", "ok", "</think>", "4"]])

    monkeypatch.setattr(loader_module, "load_engine", load)
    return seen


def test_auto_is_the_default_and_a_file_without_a_catalog_draft_speculates_with_ngrams(runner, captured, small_gguf):
    assert runner.invoke(app, ["ask", "hi", "-m", str(small_gguf)]).exit_code == 0
    assert (captured[-1].speculate, captured[-1].draft) == ("auto", None)
    assert runner.invoke(app, ["ask", "hi", "-m", str(small_gguf), "--speculate", "off"]).exit_code == 0
    assert captured[-1].speculate == "off"


def test_the_config_sets_the_mode(runner, captured, small_gguf, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('speculate = "ngram"\n')
    monkeypatch.setattr("localr1.config.config_file", lambda: config)
    assert runner.invoke(app, ["ask", "hi", "-m", str(small_gguf)]).exit_code == 0
    assert captured[-1].speculate == "ngram"
    config.write_text('speculate = "always"\n')
    result = runner.invoke(app, ["ask", "hi", "-m", str(small_gguf)])
    assert result.exit_code != 0 and "speculate must be one of off, ngram, draft, auto" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--speculate", "sometimes"], "--speculate must be one of off, ngram, draft, auto"),
        (["--speculate", "off", "--draft", "r1:1.5b"], "--draft needs speculation"),
        (["--speculate", "draft"], "the catalog names no draft model for"),
    ],
)
def test_bad_speculation_options_are_one_line(runner, captured, small_gguf, args, message):
    result = runner.invoke(app, ["ask", "hi", "-m", str(small_gguf), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the line and its hint


def test_a_draft_file_reaches_the_engine(runner, captured, small_gguf, tmp_path):
    result = runner.invoke(
        app, ["ask", "hi", "-m", str(small_gguf), "--speculate", "draft", "--draft", str(small_gguf)]
    )
    assert result.exit_code == 0, result.output
    assert captured[-1].speculate == "draft" and captured[-1].draft == small_gguf
    assert captured[-1].draft_gpu_layers in (0, -1)


@pytest.mark.integration
def test_a_real_speculative_ask_writes_the_plain_reply_and_reports_its_drafts(runner, smollm2):
    question = "Repeat exactly, twice: the cat sat on the mat and the dog sat on the log."
    common = ["ask", question, "-m", str(smollm2), "--json", "--seed", "7", "--max-tokens", "60", "--ctx", "1024"]
    plain = json.loads(runner.invoke(app, [*common, "--speculate", "off"]).stdout)
    result = runner.invoke(app, [*common, "--speculate", "ngram"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)
    assert spec["content"] == plain["content"] and spec["usage"] == plain["usage"]
    assert "speculative" not in plain["timings"]
    stats = spec["timings"]["speculative"]
    assert stats["mode"] == "ngram" and stats["drafted"] >= stats["accepted"] > 0


@pytest.mark.integration
def test_a_draft_with_another_vocabulary_is_one_line(runner, smollm2, tiny_r1):
    result = runner.invoke(
        app, ["ask", "hi", "-m", str(smollm2), "--ctx", "512", "--speculate", "draft", "--draft", str(tiny_r1)]
    )
    assert result.exit_code == 2, result.output
    assert "cannot draft for" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "sim, mode, expect",
    [
        ("gpu", "auto", ("auto", True, -1)),  # a draft that fits on the GPU beside the target
        ("cpu", "auto", ("auto", False, 0)),  # on a CPU auto drafts from n-grams only
        ("cpu", "draft", ("draft", True, 0)),  # asked for: in RAM
    ],
)
def test_where_the_draft_goes(small_gguf, sim, mode, expect, monkeypatch):
    from localr1.config import Config
    from localr1.fit.request import LoadRequest
    from localr1.loader import plan_for, speculation
    from localr1.machine.hardware import Simulation, machine
    from localr1.units import GiB

    monkeypatch.delenv("LOCALR1_HW", raising=False)
    simulation = Simulation(vram=24 * GiB, ram=64 * GiB) if sim == "gpu" else Simulation(gpu="none", ram=64 * GiB)
    request = LoadRequest(spec=str(small_gguf), speculate=mode, draft=str(small_gguf), simulation=simulation)
    plan = plan_for(request, machine(simulation), Config(), prefer_local=True)
    said: list[str] = []
    got_mode, draft, layers = speculation(request, Config(), plan, plan.label, said.append)
    assert (got_mode, draft is not None, layers) == expect and not said
