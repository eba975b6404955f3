"""The CLI's contract with users and scripts: every command's --help text and the shape of every --json
output are fixed, so a refactor that changes either is caught. After a deliberate change, regenerate the
files with ``LOCALR1_UPDATE_GOLDEN=1 pytest tests/cli/test_cli_contract.py`` and review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine

GOLDEN = Path(__file__).with_name("golden")
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
UPDATE = os.environ.get("LOCALR1_UPDATE_GOLDEN") == "1"


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run with LOCALR1_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed"


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_text_is_unchanged(runner, name):
    args = [name, "--help"] if name else ["--help"]
    result = runner.invoke(app, args, env={"COLUMNS": "100", "TERMINAL_WIDTH": "100"})
    assert result.exit_code == 0
    _check(f"help-{name or 'localr1'}.txt", result.stdout)


def shape(value):
    """The structure of a JSON value: keys and types, not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.parametrize(
    "args",
    [["models", "--json"], ["plan", "--json"], ["plan", "r1:671b", "--json"], ["hw", "--json"], ["list", "--json"]],
    ids=lambda a: "-".join(a),
)
def test_json_shapes_are_unchanged(runner, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    name = "json-" + "-".join(a.strip("-").replace(":", "_") for a in args) + ".json"
    _check(name, json.dumps(shape(json.loads(result.stdout)), indent=1))


def test_ask_json_shape_is_unchanged(runner, monkeypatch, small_gguf):
    engine = FakeEngine([["<think>", "hm", "</think>", "4"]])
    monkeypatch.setattr(loader_module, "load_engine", lambda path, header, options, cancel=None: engine)
    result = runner.invoke(app, ["ask", "2+2?", "-m", str(small_gguf), "--json"])
    assert result.exit_code == 0, result.output
    _check("json-ask.json", json.dumps(shape(json.loads(result.stdout)), indent=1))
