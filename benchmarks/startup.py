"""Wall time of `localr1 --help` and `localr1 --version` (target: < 0.3 s), median of repeated runs.

    python benchmarks/startup.py [--runs 15] [--json]

Runs the installed `localr1` entry point next to this Python (falls back to `python -m localr1`), and lists
the slowest imports of `--help` (python -X importtime) so regressions are easy to find.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def command() -> list[str]:
    exe = Path(sys.executable).with_name("localr1")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("localr1")
    return [found] if found else [sys.executable, "-m", "localr1"]


def wall(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return out


def slowest_imports(n: int = 8) -> list[tuple[float, str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "localr1", "--help"], capture_output=True, text=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line[len("import time:") :].split("|")]
            if parts[1].isdigit():
                rows.append((int(parts[1]) / 1e6, parts[2]))
    return sorted(rows, reverse=True)[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = command()
    results = {
        name: wall(base + [flag], args.runs) for name, flag in (("--help", "--help"), ("--version", "--version"))
    }
    summary = {k: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3)} for k, v in results.items()}
    if args.json:
        print(json.dumps({"command": base, "runs": args.runs, **summary}, indent=2))
        return 0
    print(f"{' '.join(base)}  ({args.runs} runs each)")
    for k, v in summary.items():
        flag = "ok" if v["median_s"] < 0.3 else "SLOW (target < 0.3 s)"
        print(f"  {k:10} median {v['median_s']:.3f} s   max {v['max_s']:.3f} s   {flag}")
    print("slowest imports of --help (cumulative s):")
    for seconds, name in slowest_imports():
        print(f"  {seconds:.3f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
