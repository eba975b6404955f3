"""How many CPU cores llama.cpp should use: one thread per physical core (no knowledge of the rest of the
machine, so both the hardware probe and the engine can ask)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


@functools.cache
def physical_cores() -> int:
    """Physical CPU cores available to this process: llama.cpp runs best with one thread per core (on Apple
    Silicon, per performance core: a thread on an efficiency core holds the others up at every step).
    The same rules as llama.cpp's own default (``cpu_get_num_math``)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        logical = os.cpu_count() or 1
        if platform.system() == "Darwin":
            for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
                try:
                    return max(1, int(_run(["sysctl", "-n", key]).strip()))
                except (OSError, ValueError, subprocess.SubprocessError):
                    continue
        return logical // 2 if logical > 4 else logical  # SMT is the rule on x86 desktops; no portable probe
    cores: set[str] = set()
    for cpu in allowed:
        sibling = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(sibling.read_text().strip())
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


def _run(cmd: list[str], timeout: float = 5.0) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
