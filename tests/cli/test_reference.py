"""docs/commands.md is generated from the CLI itself: it must match what the CLI says today."""

from __future__ import annotations

from pathlib import Path

from localr1.cli.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def test_command_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/commands.md is out of date: run `python -m localr1.cli.reference > docs/commands.md`"
    )


def test_reference_covers_every_command_and_option():
    import typer

    from localr1.cli.app import app

    text = render()
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="localr1")
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        assert f"## `localr1 {name}`" in text
        for param in cmd.get_params(ctx):
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help" and not param.hidden:
                    assert opt in text, f"{name} {opt}"
