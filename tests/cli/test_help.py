"""Every command's help: prose that the terminal wraps, examples one per line, the same shape everywhere."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from localr1.cli.app import app
from localr1.cli.helptext import command_help

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_command_help_joins_prose_and_keeps_examples_apart():
    text = """First line,
    still the first paragraph.

    A second paragraph
    over two lines.
    Examples:
    $ localr1 ask "x"   # a comment
    $ localr1 chat
    """
    assert command_help(text) == (
        "First line, still the first paragraph.\n\n"
        "A second paragraph over two lines. Examples:\n"
        '$ localr1 ask "x"   # a comment\n'
        "$ localr1 chat"
    )
    assert command_help(command_help(text)) == command_help(text)


def test_every_command_has_examples():
    assert {"ask", "chat", "pull", "list", "rm", "quantize", "convert", "hw", "models", "plan", "bench"} <= set(
        COMMANDS
    )
    group = typer.main.get_command(app)
    for name in ["", *COMMANDS]:
        help_text = (group.commands[name] if name else group).help  # type: ignore[attr-defined]
        assert command_help(help_text) == help_text, f"{name or 'localr1'}: help not written through command_help"
        assert "\nExamples:\n$ " in help_text, f"{name or 'localr1'}: no examples"


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_shows_each_paragraph_and_example_on_one_line(name):
    """On a wide terminal no sentence breaks mid-line and every example keeps its own line, as written."""
    group = typer.main.get_command(app)
    help_text = (group.commands[name] if name else group).help  # type: ignore[attr-defined]
    args = [name, "--help"] if name else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0
    shown = [line.strip() for line in result.stdout.splitlines()]
    for line in help_text.splitlines():
        if line:
            assert line.strip() in shown, f"{name or 'localr1'}: {line!r} is not shown on a line of its own"
