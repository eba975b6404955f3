"""The bounds of every number a user can set, on the command line or in config.toml.

llama.cpp trusts what it is given: ``--threads 65536`` or ``threads = -3`` reached it and segfaulted. Each
number is checked here, once, against what this machine can do, before native code sees it; an out of
range value is a one-line error that names where it came from.
"""

from __future__ import annotations

import os

from localr1.errors import UsageError

GGML_MAX_THREADS = 512  # ggml's own limit (GGML_MAX_N_THREADS)
MAX_CTX = 1 << 20  # 1M tokens: far beyond R1's 128k; the planner then checks that it fits in memory
MAX_GPU_LAYERS = 4096  # more than any model has; -1 means all
MAX_BATCH = 1 << 16
MAX_PARALLEL = 64  # llama.cpp keeps at most 256 sequences; 64 slots already split memory thin


def max_threads() -> int:
    """More threads than 4 per logical CPU only slow llama.cpp down; ggml stops at 512."""
    return min(GGML_MAX_THREADS, 4 * (os.cpu_count() or 1))


def bounded(name: str, value: int | None, low: int, high: int, hint: str | None = None) -> int | None:
    """``value`` if it is None or an int in [low, high], else a UsageError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{name} must be from {low:,} to {high:,}, not {value!r}", hint=hint)
    return value


def threads(value: int | None, name: str = "--threads") -> int | None:
    cpus = os.cpu_count() or 1
    return bounded(name, value, 1, max_threads(), hint=f"This machine has {cpus} logical CPUs.")


def ctx(value: int | None, name: str = "--ctx") -> int | None:
    return bounded(name, value, 16, MAX_CTX, hint="R1 and its distills are trained on up to 131,072 tokens.")


def gpu_layers(value: int | None, name: str = "--gpu-layers") -> int | None:
    return bounded(name, value, -1, MAX_GPU_LAYERS, hint="-1 puts every layer on the GPU, 0 none.")


def batch(value: int | None, name: str = "batch") -> int | None:
    return bounded(name, value, 1, MAX_BATCH)


def seconds_from_env(name: str, default: float, low: float, high: float) -> float:
    """A number of seconds from the environment variable ``name`` (unset or empty: ``default``), checked."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise UsageError(
            f"{name} must be a number of seconds from {low:g} to {high:g}, not {text!r}",
            hint=f"Unset it for the default ({default:g} seconds).",
        )
    return value
