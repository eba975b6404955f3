"""How fast this CPU streams quantized weights through llama.cpp's own kernels: the planner's CPU speed.

A token's decode on the CPU is one matrix-vector product per weight matrix. Whether that is bound by
memory bandwidth or, on a few cores, by the dequantize-and-multiply arithmetic, the rate at which ggml's
CPU kernels get through weight bytes is what sets the speed. This measures it directly: ggml multiplies
a ~96 MiB matrix of each quant family (zeros: the kernels' speed does not depend on the values) by a vector
with the threads the engine would use, a few times, keeping the best, in three rounds (the families in
turn), and keeps each family's median round; likewise llama.cpp's flash attention over a KV cache, what a
graph node costs the threads, and one whole decode step of a probe model (engine/step_probe.py), from which
the planner takes the share of these speeds a real step keeps. It takes about three seconds and is cached
per CPU, thread count and llama.cpp version (``cache_dir()/cpu-speed.json``).

Kernels with repacked weights (llama.cpp's CPU_REPACK buffers, used where the engine allows repacking)
can be faster than the plain tensors measured here: on such CPUs the estimate errs on the slow side.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localr1.engine.devices import ggml_base_library
from localr1.errors import LocalR1Error
from localr1.paths import cache_dir

# ggml type ids of the families the planner tells apart (their kernels differ in cost per byte); f16: the
# KV cache, which attention reads for every token of the context
FAMILIES = {"q4_k": 12, "q6_k": 14, "q8_0": 8, "f16": 1}
_F32 = 0
MATRIX_BYTES = 96 << 20  # beyond the last-level cache of desktop CPUs
SYNC_NODES = 512  # the chain of tiny operations whose cost per node is the threads' hand-off
ROUNDS = 3
# the attention probe: head size, query heads and KV heads of r1:7b; its context and layers
ATTN_SHAPE = (128, 28, 4)
ATTN_KV = 2048
ATTN_LAYERS = 16
STEPS_PER_ROUND = 12  # decode steps of the step probe between rounds of the kernels
VERSION = 4  # 3: the step probe's decode step (engine/step_probe.py); 4: flash attention's own rate


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def family(quant: str) -> str:
    """The measured family whose kernel cost a quant (or tensor) type is closest to."""
    q = quant.upper()
    if q in ("F16", "BF16", "F32"):
        return "f16"
    if q.startswith("Q8"):
        return "q8_0"
    if q.startswith(("Q5", "Q6")):
        return "q6_k"
    return "q4_k"


def _libraries() -> tuple[Any, Any] | None:

    base = ggml_base_library()
    folder = Path(base._name).parent if getattr(base, "_name", None) else None
    candidates = sorted(folder.glob("libggml-cpu*.so*")) + sorted(folder.glob("libggml-cpu*.dylib")) if folder else []
    candidates += sorted(folder.glob("ggml-cpu*.dll")) if folder else []
    for path in candidates:
        try:
            cpu = ctypes.CDLL(str(path))
            cpu.ggml_graph_compute_with_ctx  # noqa: B018 - present only in a CPU backend library
        except (OSError, AttributeError):
            continue
        return base, cpu
    return None


def _bind(base: Any, cpu: Any) -> None:
    vp = ctypes.c_void_p
    base.ggml_init.argtypes, base.ggml_init.restype = [_InitParams], vp
    base.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    base.ggml_new_tensor_2d.restype = vp
    base.ggml_new_tensor_1d.argtypes, base.ggml_new_tensor_1d.restype = [vp, ctypes.c_int, ctypes.c_int64], vp
    i64 = ctypes.c_int64
    base.ggml_new_tensor_3d.argtypes, base.ggml_new_tensor_3d.restype = [vp, ctypes.c_int, i64, i64, i64], vp
    base.ggml_flash_attn_ext.argtypes = [vp, vp, vp, vp, vp, ctypes.c_float, ctypes.c_float, ctypes.c_float]
    base.ggml_flash_attn_ext.restype = vp
    base.ggml_permute.argtypes = [vp, vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    base.ggml_permute.restype = vp
    base.ggml_add.argtypes, base.ggml_add.restype = [vp, vp, vp], vp
    base.ggml_mul_mat.argtypes, base.ggml_mul_mat.restype = [vp, vp, vp], vp
    base.ggml_new_graph.argtypes, base.ggml_new_graph.restype = [vp], vp
    base.ggml_build_forward_expand.argtypes, base.ggml_build_forward_expand.restype = [vp, vp], None
    base.ggml_get_data.argtypes, base.ggml_get_data.restype = [vp], vp
    base.ggml_nbytes.argtypes, base.ggml_nbytes.restype = [vp], ctypes.c_size_t
    base.ggml_row_size.argtypes, base.ggml_row_size.restype = [ctypes.c_int, ctypes.c_int64], ctypes.c_size_t
    base.ggml_free.argtypes, base.ggml_free.restype = [vp], None
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    with contextlib.suppress(AttributeError):
        cpu.ggml_cpu_init()


def _best_seconds(cpu: Any, ctx: Any, graph: Any, threads: int, reps: int) -> float:
    """The fastest of ``reps`` computations of ``graph``, after one warm-up (pages touched, threads started)."""
    cpu.ggml_graph_compute_with_ctx(ctx, graph, threads)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        cpu.ggml_graph_compute_with_ctx(ctx, graph, threads)
        best = min(best, time.perf_counter() - started)
    return best


def _measure_one(base: Any, cpu: Any, ggml_type: int, threads: int, reps: int) -> float:
    cols = 4096
    rows = max(256, MATRIX_BYTES // base.ggml_row_size(ggml_type, cols))
    ctx = base.ggml_init(_InitParams(MATRIX_BYTES + (64 << 20), None, False))
    if not ctx:
        raise MemoryError("ggml_init failed")
    try:
        a = base.ggml_new_tensor_2d(ctx, ggml_type, cols, rows)
        x = base.ggml_new_tensor_2d(ctx, _F32, cols, 1)
        ctypes.memset(base.ggml_get_data(a), 0, base.ggml_nbytes(a))
        ctypes.memset(base.ggml_get_data(x), 0, base.ggml_nbytes(x))
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, base.ggml_mul_mat(ctx, a, x))
        return base.ggml_nbytes(a) / _best_seconds(cpu, ctx, graph, threads, reps) / 1e9
    finally:
        base.ggml_free(ctx)


def _measure_attention(base: Any, cpu: Any, threads: int, reps: int) -> float:
    """GB/s of F16 KV cache llama.cpp's CPU flash attention gets through per query head: one token's
    attention over ATTN_KV cached tokens in each of ATTN_LAYERS layers (distinct caches, as a step reads
    them), grouped-query heads as the distills have them. A query head walks its KV head's rows on its own,
    so the cache is counted once per query head."""
    head, n_head, n_kv_head = ATTN_SHAPE
    kv_bytes = head * ATTN_KV * n_kv_head * 2 * 2 * ATTN_LAYERS  # K and V, F16
    ctx = base.ggml_init(_InitParams(kv_bytes + (64 << 20), None, False))
    if not ctx:
        raise MemoryError("ggml_init failed")
    try:
        graph = base.ggml_new_graph(ctx)
        for _ in range(ATTN_LAYERS):
            q = base.ggml_new_tensor_3d(ctx, _F32, head, 1, n_head)
            # as llama.cpp's cache holds them: a cell's KV heads side by side, each head a strided view
            k = base.ggml_new_tensor_3d(ctx, FAMILIES["f16"], head, n_kv_head, ATTN_KV)
            v = base.ggml_new_tensor_3d(ctx, FAMILIES["f16"], head, n_kv_head, ATTN_KV)
            for t in (q, k, v):
                ctypes.memset(base.ggml_get_data(t), 0, base.ggml_nbytes(t))
            k, v = (base.ggml_permute(ctx, t, 0, 2, 1, 3) for t in (k, v))
            base.ggml_build_forward_expand(graph, base.ggml_flash_attn_ext(ctx, q, k, v, None, head**-0.5, 0.0, 0.0))
        seconds = _best_seconds(cpu, ctx, graph, threads, reps)
        return kv_bytes * (n_head // n_kv_head) / seconds / 1e9
    finally:
        base.ggml_free(ctx)


def _measure_sync(base: Any, cpu: Any, threads: int, reps: int) -> float:
    """Microseconds a graph node costs beyond its arithmetic: a chain of tiny additions, each of which the
    threads split and then wait for one another on (a decode step has ~30 such nodes per layer)."""
    ctx = base.ggml_init(_InitParams(16 << 20, None, False))
    if not ctx:
        raise MemoryError("ggml_init failed")
    try:
        x = base.ggml_new_tensor_1d(ctx, _F32, 64)
        ctypes.memset(base.ggml_get_data(x), 0, base.ggml_nbytes(x))
        y = x
        for _ in range(SYNC_NODES):
            y = base.ggml_add(ctx, y, x)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, y)
        return _best_seconds(cpu, ctx, graph, threads, reps) / SYNC_NODES * 1e6
    finally:
        base.ggml_free(ctx)


@contextlib.contextmanager
def _step_probe(threads: int) -> Iterator[Any]:
    """engine/step_probe.py's model loaded (None where it cannot be, or ``threads`` is 0: measured without)."""
    if threads <= 0:
        yield None
        return
    from localr1.engine.step_probe import StepProbe  # loads a model: only when measuring

    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        probe = StepProbe(threads, folder)
    except (LocalR1Error, OSError, MemoryError):
        yield None
        return
    try:
        yield probe
    finally:
        probe.close()


def measure(threads: int, *, reps: int = 4, rounds: int = ROUNDS, step: bool = True) -> dict[str, float] | None:
    """GB/s of weights each family's matrix-vector kernel gets through with ``threads``, ``attn`` (GB/s of
    KV cache per query head through flash attention), ``sync_us`` (see _measure_sync) and ``step_s``, the
    seconds of one decode step of engine/step_probe.py's model (0 where it could not run, or ``step`` is
    off); None when this llama.cpp build offers no CPU library to measure with."""
    libs = _libraries()
    if libs is None:
        return None
    base, cpu = libs
    _bind(base, cpu)
    # In rounds, each family in turn and a burst of the step probe's decode steps between them, each figure
    # the median of its rounds (the probe's: of all its steps): a VM's speed swings over tenths of a second,
    # and one family or the step measured in a slow moment would skew the planner's figures.
    seen: dict[str, list[float]] = {name: [] for name in (*FAMILIES, "attn", "sync_us", "step_s")}
    with _step_probe(threads if step else 0) as probe:
        for _ in range(rounds):
            for name, t in FAMILIES.items():
                seen[name].append(_measure_one(base, cpu, t, threads, reps))
            seen["attn"].append(_measure_attention(base, cpu, threads, reps))
            seen["sync_us"].append(_measure_sync(base, cpu, threads, reps))
            if probe is not None:
                try:
                    seen["step_s"] += probe.steps(STEPS_PER_ROUND, warmup=2)
                except LocalR1Error:  # the kernels' figures still stand; the planner assumes the step's share
                    seen["step_s"], probe = [], None
    rates = {name: round(statistics.median(values), 6 if name == "step_s" else 3) for name, values in seen.items()
             if values}  # fmt: skip
    rates.setdefault("step_s", 0.0)
    return rates


def forget_cpu_speed(cache: Path | None = None) -> None:
    """Drop every cached measurement, so that the next ``cpu_speed`` measures afresh (``hw --measure``)."""
    (cache or cache_dir() / "cpu-speed.json").unlink(missing_ok=True)


def cpu_speed(cpu_name: str, threads: int, *, cache: Path | None = None) -> dict[str, float] | None:
    """The measured rates for this CPU and thread count, from the cache or measured now (and cached)."""

    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = cache or cache_dir() / "cpu-speed.json"
    key = f"v{VERSION}|{cpu_name}|{threads}|{version}"
    stored: dict = {}
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(path.read_text(encoding="utf-8"))
    entry = stored.get(key) if isinstance(stored, dict) else None
    keys = (*FAMILIES, "attn", "sync_us")
    if (
        isinstance(entry, dict)
        and all(isinstance(entry.get(f), int | float) and entry[f] > 0 for f in keys)
        and isinstance(entry.get("step_s"), int | float)
        and entry["step_s"] >= 0
    ):
        return {f: float(entry[f]) for f in (*keys, "step_s")}
    try:
        rates = measure(threads)
    except (OSError, MemoryError, AttributeError):
        return None
    if rates is None:
        return None
    stored = stored if isinstance(stored, dict) else {}
    stored[key] = rates
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1), encoding="utf-8")
        tmp.replace(path)
    return rates
