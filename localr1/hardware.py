"""What the machine has. (The full probe of GPUs and memory lives with the planner.)"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical CPU cores available to this process: llama.cpp runs best with one thread per core."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = set(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in allowed:
        sibling = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(sibling.read_text().strip())
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))
