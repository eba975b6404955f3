"""The Hugging Face cache layout, from localr1's side: deleting a model's files there frees its blobs only
when no other snapshot link uses them (``rm``)."""

from __future__ import annotations

import os
from pathlib import Path


def _blob_of(path: Path) -> Path:
    return Path(os.path.realpath(path))


def remove_files(paths: list[Path]) -> int:
    """Delete model files; in the HF cache, the snapshot links and every blob no other link uses."""
    freed = 0
    for path in paths:
        blob = _blob_of(path)
        in_cache = path.is_symlink() and blob.parent.name == "blobs"
        if in_cache:
            repo_dir = blob.parent.parent
            path.unlink()
            still_used = any(
                p.is_symlink() and _blob_of(p) == blob for p in (repo_dir / "snapshots").rglob("*") if p != path
            )
            if not still_used and blob.exists():
                freed += blob.stat().st_size
                blob.unlink()
                Path(str(blob) + ".lock").unlink(missing_ok=True)
            for parent in path.parents:  # empty folders of the snapshot
                if parent == repo_dir or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        elif path.exists():
            freed += path.stat().st_size
            path.unlink()
    return freed
