"""Byte units and the one formatter for sizes shown to users."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def gib(n: int | float | None) -> str:
    """``12.3 GiB``; ``unknown`` for None."""
    return "unknown" if n is None else f"{n / GiB:.1f} GiB"
