"""Writing a new model file safely: refuse to overwrite, check the disk first, write ``NAME.partial`` and
rename it at the end, so an interrupted or failed run leaves nothing half-written behind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from localr1.errors import LocalR1Error, UsageError
from localr1.units import GiB

MARGIN = 64 << 20  # headers, page-cache slack, the filesystem's own blocks


def check_new_output(
    output: Path, need: int, free_bytes: Callable[[Path], int] | None, *, what: str, hint: str
) -> None:
    """Before any byte: ``output`` must not exist, and ``need`` bytes (plus a margin) must fit beside it."""
    if output.exists():
        raise UsageError(f"{output} already exists", hint="Choose another name with -o, or delete it first.")
    if free_bytes is not None:
        free = free_bytes(output.parent)
        if need + MARGIN > free:
            raise LocalR1Error(
                f"not enough disk space: {what} needs about {need / GiB:.1f} GiB, "
                f"{free / GiB:.1f} GiB is free in {output.parent}",
                hint=hint,
            )
    output.parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def partial_file(output: Path) -> Iterator[Path]:
    """Yields ``OUTPUT.partial`` to write; renamed to ``output`` on success, deleted on any failure or Ctrl-C."""
    partial = output.with_name(output.name + ".partial")
    try:
        yield partial
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
