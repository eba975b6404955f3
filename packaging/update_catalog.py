"""Refresh models.toml from the Hub: each build's file name as the Hub lists it (split parts found by
listing) and its exact size in bytes (all parts together), with a note saying when.

    python packaging/update_catalog.py [--catalog models.toml] [--only r1:671b] [--dry-run]

It needs the Hub (HF_ENDPOINT, like every download) and rewrites only the ``files`` paths that changed and
each model's ``[models."NAME".sizes]`` table and ``sizes_note``, keeping every other line and comment.
Each change is printed; ``--dry-run`` prints them without writing.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localr1.errors import LocalR1Error  # noqa: E402
from localr1.models.catalog import parse_catalog  # noqa: E402
from localr1.models.download import _with_parts, list_remote, listed_build  # noqa: E402


def live_builds(model) -> dict[str, tuple[str, int]]:
    """quant -> (first file as the Hub lists it, bytes of all its parts)."""
    remote = list_remote(model.gguf_repo)
    out = {}
    for quant, rel in model.files.items():
        live, _ = listed_build(remote, rel)
        parts = _with_parts(remote, live)
        out[quant] = (live, sum(f.size for f in parts))
    return out


def _block_bounds(lines: list[str], header: str) -> tuple[int, int] | None:
    """[start, end) of the lines of a TOML table, its header line included."""
    for i, line in enumerate(lines):
        if line.strip() == header:
            end = i + 1
            while end < len(lines) and not lines[end].startswith("["):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1  # the blank lines before the next table stay where they are
            return i, end
    return None


def rewrite(text: str, name: str, builds: dict[str, tuple[str, int]], today: str) -> tuple[str, list[str]]:
    lines = text.splitlines()
    changes: list[str] = []
    files = _block_bounds(lines, f'[models."{name}".files]')
    if files is None:
        raise LocalR1Error(f"{name}: no files table in the catalog text")
    for i in range(files[0] + 1, files[1]):
        m = re.match(r'^(\s*)([A-Za-z0-9_\-]+)(\s*=\s*)"([^"]+)"(.*)$', lines[i])
        if m and m[2] in builds and builds[m[2]][0] != m[4]:
            changes.append(f"{name}:{m[2]}: {m[4]} -> {builds[m[2]][0]}")
            lines[i] = f'{m[1]}{m[2]}{m[3]}"{builds[m[2]][0]}"{m[5]}'
    sizes = [f"{quant} = {size:_}" for quant, (_, size) in builds.items()]
    block = [f'[models."{name}".sizes]', "# exact bytes of each build, all split parts together", *sizes]
    old = _block_bounds(lines, f'[models."{name}".sizes]')
    if old is not None:
        previous = [line for line in lines[old[0] : old[1]] if "=" in line and not line.lstrip().startswith("#")]
        if previous != sizes:
            changes.append(f"{name}: sizes {', '.join(sizes)}")
        lines[old[0] : old[1]] = block
    else:
        files = _block_bounds(lines, f'[models."{name}".files]')
        lines[files[1] : files[1]] = block
        changes.append(f"{name}: sizes {', '.join(sizes)}")
    note = f'sizes_note = "exact, from the Hub\'s listing on {today}"'
    head = _block_bounds(lines, f'[models."{name}"]')
    existing = [i for i in range(head[0] + 1, head[1]) if lines[i].startswith("sizes_note")]
    if existing:
        lines[existing[0]] = note
    else:
        lines.insert(head[1], note)
    return "\n".join(lines) + "\n", changes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", type=Path, default=ROOT / "models.toml")
    ap.add_argument("--only", action="append", default=[], help="a model name (repeatable); default: all")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    text = args.catalog.read_text(encoding="utf-8")
    catalog = parse_catalog(text, str(args.catalog))
    today = datetime.date.today().isoformat()
    all_changes: list[str] = []
    for name, model in catalog.items():
        if args.only and name not in args.only:
            continue
        try:
            builds = live_builds(model)
        except LocalR1Error as exc:
            print(f"{name}: {exc.message}", file=sys.stderr)
            return 1
        text, changes = rewrite(text, name, builds, today)
        all_changes += changes
    parse_catalog(text, str(args.catalog))  # still a valid catalog
    for change in all_changes:
        print(change)
    if not all_changes:
        print("the catalog matches the Hub")
    elif not args.dry_run:
        args.catalog.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
