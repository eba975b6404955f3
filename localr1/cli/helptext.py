"""Command help, written once and shown the same way by every command.

Typer's rich mode keeps every newline of a help text and dedents whatever follows its first paragraph,
so a hard-wrapped sentence breaks mid-line on a wide terminal and indented examples lose their indent when
"Examples:" opens the rest. Help is therefore written as prose paragraphs, joined here into one line each
(the terminal wraps them), and example lines that start with "$ ", kept one per line.
"""

from __future__ import annotations

import inspect

EXAMPLE = "$ "


def command_help(text: str) -> str:
    """The help text with each prose paragraph on one line and each example on its own line."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        prose: list[str] = []
        for line in (line.strip() for line in paragraph.splitlines()):
            if line.startswith(EXAMPLE):
                if prose:
                    lines.append(" ".join(prose))
                    prose = []
                lines.append(line)
            elif line:
                prose.append(line)
        if prose:
            lines.append(" ".join(prose))
        if lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)
