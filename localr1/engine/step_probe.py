"""How fast llama.cpp runs a whole decode step on this CPU: the share of the isolated kernels' speed it keeps.

``engine/cpu_speed.py`` times each quant family's matrix-vector kernel alone. A real decode step runs a
model's few hundred matrices one after another, with the layers' other operations and the threads' hand-offs
between them, through the engine's own path (its thread pool, repacked weights where the CPU allows,
flash attention): how much of the kernels' speed survives that differs from machine to machine (0.83-0.92
on the VM localr1 was first developed on, about 1.0 on another). This runs it: a model in a distill's shape
(qwen2, grouped-query attention, Q4_K_M's tensor types by llama.cpp's own rules) with every weight zero,
written as a sparse file (a few KB on disk, removed once loaded) and read into memory (no mmap, so every byte
is really there), decoded one token at a time through llama.cpp's C API (it has no tokenizer for the
engine's chat format) with the engine's thread pool and weight repacking. Its size, ~0.5 GiB of weights, is
beyond the last-level cache of the CPUs localr1 runs on, as every real model is. engine/cpu_speed.py decodes
it in bursts between its rounds of kernel measurements, once per CPU (cached with the kernel speeds).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from localr1.engine.backend import _LOG, LOAD_MODE_NONE, init_backend, set_fields, weight_repacking
from localr1.engine.threadpool import CpuThreadpool
from localr1.errors import EngineError
from localr1.fit.arch import Architecture
from localr1.fit.quant_rules import planned_types, tensor_bytes
from localr1.models.gguf_layout import write_layout

# A qwen2 shape between r1:1.5b and r1:7b (their head size and KV heads), 16 layers: 514 MiB of weights, a
# small vocabulary (the output layer is measured by the kernels' rate like every other matrix).
PROBE = Architecture("qwen2", 16, 2048, 8192, 16, 2, 128, 256, 4096)
PROBE_QUANT = "Q4_K_M"
PROMPT_TOKENS = 8
N_CTX = 256
WARMUP_STEPS = 4
TIMED_STEPS = 32


@dataclass(frozen=True)
class StepTiming:
    seconds: float  # the median decode step
    read: dict[str, int]  # bytes of each tensor type a step reads (every matrix but the token embeddings)
    n_layer: int


def probe_types() -> dict[str, str]:
    return planned_types(PROBE, PROBE_QUANT)


def write_probe_model(path: Path) -> Path:
    """The probe model: a real GGUF header and tensor table, the data a hole of zeros (sparse)."""
    return write_layout(PROBE, path, probe_types(), name="localr1 CPU step probe (zero weights)")


def step_read() -> dict[str, int]:
    """Bytes of each type one decode step of the probe reads: every tensor but the token embeddings (one row
    of those is looked up)."""
    types = probe_types()
    read: dict[str, int] = {}
    for spec in PROBE.tensors():
        if spec.role == "embd":
            continue
        read[types[spec.name]] = read.get(types[spec.name], 0) + tensor_bytes(types[spec.name], spec.shape)
    return read


class StepProbe:
    """The probe model loaded through llama.cpp as the engine ``ask`` uses runs a model (weights read into
    memory and repacked where the engine allows, the engine's thread pool, flash attention as llama.cpp
    decides), decoding a token at a time. ``steps(n)`` times n decode steps; the model file is removed once
    loaded (its weights are in memory)."""

    def __init__(self, threads: int, folder: Path | None = None) -> None:
        self._lib = lib = init_backend()
        self._ctx = self._pool = self._model = None
        fd, name = tempfile.mkstemp(prefix="localr1-step-probe-", suffix=".gguf", dir=folder)
        os.close(fd)
        path = Path(name)
        try:
            write_probe_model(path)
            mparams = set_fields(lib.llama_model_default_params(), n_gpu_layers=0, load_mode=LOAD_MODE_NONE,
                                 use_extra_bufts=weight_repacking(lib))  # fmt: skip
            self._model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        finally:
            path.unlink(missing_ok=True)
        if not self._model:
            raise EngineError(f"llama.cpp could not load the CPU step probe: {_LOG.tail()}")
        try:
            self._start(threads)
        except BaseException:
            self.close()
            raise
        self._token = (lib.llama_token * 1)(1)
        self._n = 0

    def _start(self, threads: int) -> None:
        lib = self._lib
        cparams = set_fields(lib.llama_context_default_params(), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
                             n_seq_max=1, n_threads=threads, n_threads_batch=threads)  # fmt: skip
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise EngineError(f"llama.cpp could not make a context for the CPU step probe: {_LOG.tail()}")
        self._pool = CpuThreadpool.create(threads)
        if self._pool is not None:
            attach = lib._lib["llama_attach_threadpool"]
            attach.argtypes, attach.restype = [ctypes.c_void_p] * 3, None
            attach(self._ctx, self._pool.handle, None)
        prompt = (lib.llama_token * PROMPT_TOKENS)(*range(1, PROMPT_TOKENS + 1))
        if lib.llama_decode(self._ctx, lib.llama_batch_get_one(prompt, PROMPT_TOKENS)) != 0:
            raise EngineError("llama.cpp failed to decode the CPU step probe's prompt")

    def steps(self, n: int, *, warmup: int = WARMUP_STEPS) -> list[float]:
        """Seconds of each of ``n`` decode steps, after ``warmup`` untimed ones; the context starts over
        before it fills, so every step attends over a few tokens only."""
        lib, out = self._lib, []
        for i in range(warmup + n):
            if self._n >= N_CTX - PROMPT_TOKENS - 1:
                lib.llama_memory_seq_rm(lib.llama_get_memory(self._ctx), 0, PROMPT_TOKENS, -1)
                self._n = 0
            self._token[0] = 1 + self._n % (PROBE.n_vocab - 1)
            started = time.perf_counter()
            if lib.llama_decode(self._ctx, lib.llama_batch_get_one(self._token, 1)) != 0:
                raise EngineError("llama.cpp failed to decode a step of the CPU step probe")
            if i >= warmup:
                out.append(time.perf_counter() - started)
            self._n += 1
        return out

    def close(self) -> None:
        lib = self._lib
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> StepProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def time_decode_step(threads: int, folder: Path | None = None) -> StepTiming:
    """The median time of one decode step of the probe model (TIMED_STEPS of them)."""
    with StepProbe(threads, folder) as probe:
        steps = probe.steps(TIMED_STEPS)
    return StepTiming(statistics.median(steps), step_read(), PROBE.n_layer)
