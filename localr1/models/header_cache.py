"""Validated GGUF headers, kept on disk between runs.

Reading an R1 header walks 152k token strings and 151k merges (~50 ms, every ``ask``). The result of a
full validation is stored as JSON under the cache folder, keyed by each file's path, size, modification
time and inode; any change to a file (or an unreadable entry) means the header is read and validated
again. The files hold only what ``gguf_info`` kept: metadata (large arrays as their type and length),
tensor names, shapes, types and offsets. This module stores JSON objects and knows nothing of GGUF:
``gguf_info`` turns its headers into them and back (and checks what comes back like a header).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from localr1.paths import cache_dir

FORMAT = 3  # 2: per-layer arrays kept, hyperparameters checked; 3: {key, value} entries
MAX_ENTRIES = 64


def _folder() -> Path:
    return cache_dir() / "headers"


def fingerprint(paths: list[Path], keep_arrays: tuple[str, ...]) -> list[Any] | None:
    """What must be unchanged for a stored header to still be right, or None if a file cannot be read."""
    out: list[Any] = [FORMAT, list(keep_arrays)]
    try:
        for p in paths:
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino])
    except OSError:
        return None
    return out


def _entry_path(key: list[Any]) -> Path:
    return _folder() / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32] + ".json")


def load(key: list[Any]) -> dict | None:
    """The object stored under ``key``, or None (absent, unreadable, or stored for another key)."""
    path = _entry_path(key)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("key") != key or not isinstance(raw.get("value"), dict):
            raise ValueError("not an entry of this key")
        return raw["value"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        with contextlib.suppress(OSError):
            path.unlink()  # unreadable or from another version: read the header again
        return None


def store(key: list[Any], value: dict) -> None:
    """Best effort: a cache that cannot be written only costs the next run a header read."""
    raw = {"key": key, "value": value}
    folder = _folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".partial")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(raw, f, ensure_ascii=False)
            os.replace(tmp, _entry_path(key))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-MAX_ENTRIES]:
            old.unlink()
    except (OSError, ValueError, TypeError):
        pass
