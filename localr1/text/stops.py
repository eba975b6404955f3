"""Stop strings: the answer ends just before the first of them, wherever token boundaries fall.

Text arrives in pieces; a stop string may straddle two of them, so the last ``len(longest) - 1``
characters are held back until the next piece shows whether they begin one.
"""

from __future__ import annotations


class StopScanner:
    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that can go out now; after a stop string, nothing more (``stopped`` is then True)."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._buffer += text
        cut = min((i for s in self.stops if (i := self._buffer.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self._buffer, self.stopped = self._buffer[:cut], "", True
            return out
        keep = min(self._hold, len(self._buffer))
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return out

    def flush(self) -> str:
        """What was held back, at the end of the text."""
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out
