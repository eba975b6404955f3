"""Text from a peer (a server, a suite file, an HTTP header) made safe to print on a terminal.

A terminal obeys escape sequences in what it is sent: ``\\x1b]0;...\\x07`` sets its title, ``\\x1b[2J``
clears it, others move the cursor over earlier lines or, in some terminals, write files. Whatever a peer
wrote is passed through ``printable`` before it reaches the screen: escape sequences are removed whole,
other control characters (C0, DEL, C1) and the bidirectional overrides that reorder what is shown become
U+FFFD, and newlines and tabs stay only where a text may have several lines.
"""

from __future__ import annotations

import re

# CSI (ESC [ ... final byte), OSC / DCS / SOS / PM / APC strings (up to BEL or ESC \\), and two-byte escapes
_ESCAPES = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI: cursor, colours, erase
    r"|\x1b[ -/]*[0-~]?"  # the other escapes
)
_CONTROLS_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, lines: bool = False, limit: int | None = None) -> str:
    """``text`` without escape sequences or control characters (newlines and tabs kept if ``lines``), cut to
    ``limit`` characters (with an ellipsis) when given."""
    text = _ESCAPES.sub("", text)
    text = (_CONTROLS_LINES if lines else _CONTROLS_ONE_LINE).sub("\ufffd", text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text
