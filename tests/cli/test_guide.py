"""The user guide's and README's command lines name commands and options the CLI has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from localr1.cli.app import app

ROOT = Path(__file__).resolve().parents[2]


def _command_lines(path: Path) -> list[str]:
    lines, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        line = re.split(r"\s#\s", line, maxsplit=1)[0].strip()
        if inside and line.startswith("localr1 "):
            lines.append(line)
    return lines


def _options(cmd, ctx) -> set[str]:
    return {opt for param in cmd.get_params(ctx) for opt in [*param.opts, *param.secondary_opts]}


@pytest.mark.parametrize("doc", ["docs/guide.md", "README.md"])
def test_documented_command_lines_exist(doc):
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="localr1")
    lines = _command_lines(ROOT / doc)
    assert len(lines) > 10
    for line in lines:
        words = shlex.split(line.replace("…", "x").replace("$(", "(").split("|")[0].split(">")[0])[1:]
        cmd, options = root, _options(root, ctx)
        while words and not words[0].startswith("-") and hasattr(cmd, "get_command"):
            sub = cmd.get_command(ctx, words[0])
            assert sub is not None, f"{doc}: unknown command in {line!r}"
            cmd, words = sub, words[1:]
            options = _options(cmd, ctx) | _options(root, ctx)
        for word in words:
            flag = re.match(r"^(--?[a-zA-Z][\w-]*)", word)
            if flag and word.startswith("-"):
                assert flag.group(1) in options, f"{doc}: {flag.group(1)} is not an option of {line!r}"
