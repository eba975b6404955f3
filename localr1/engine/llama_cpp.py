"""The real engine: llama.cpp through llama-cpp-python's low-level bindings.

The decode loop is written against llama.cpp's C API directly rather than ``llama_cpp.Llama``: each
token costs a handful of ctypes calls. Tokens are chosen from llama.cpp's logits read in place through a
NumPy view (no copy): an argmax for greedy decoding, ``localr1.engine.nucleus`` for temperature and top-p (R1's
default), which is exact and costs a few passes where llama.cpp's chain sorts the whole vocabulary.
Only a grammar keeps llama.cpp's native sampler chain. ``benchmarks/decode_overhead.py`` holds the loop to
llama.cpp's own eval time.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import sys
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from localr1 import limits
from localr1.engine.backend import (
    _LOG,
    LOAD_MODE_MMAP,
    LOAD_MODE_MMAP_MLOCK,
    LOAD_MODE_NONE,
    init_backend,
    set_fields,
    weight_repacking,
)
from localr1.engine.base import ModelInfo, common_prefix
from localr1.engine.devices import buffer_type, cpu_buffer_type, list_devices, tensor_split
from localr1.engine.generation import STREAM_INTERVAL_S, Generation
from localr1.engine.speculative import MAX_DRAFT, MODES, Speculator, accept, draft_costs
from localr1.engine.threadpool import CpuThreadpool
from localr1.errors import ContextOverflowError, EngineError, ModelLoadError, OutOfMemoryError, UsageError
from localr1.events import Event, FinishReason, Timings
from localr1.fit.memory import KV_TYPES, check_kv_type
from localr1.machine.cpu import physical_cores
from localr1.models.gguf_info import GGUFInfo, inspect_model
from localr1.text.prompt import Prompt, chat_format_for
from localr1.text.reasoning import THINK_CLOSE, THINK_OPEN
from localr1.text.sampling import Sampling

# Imported inside the functions that use them: numpy (heavy to import, and not needed by every command); localr1
# modules only some calls need.

DEFAULT_BATCH = 512
CLOSE_TIMEOUT_S = 10.0  # how long close() waits for a generation in another thread to stop
_UNSEEN = object()
# Generated text is handed to the front end at most this often (one 60 Hz display frame); 0: every token.


# How llama.cpp and its backends say that an allocation failed (the only place that reads their wording)
_OOM_WORDS = ("out of memory", "failed to allocate", "unable to allocate", "cudamalloc", "not enough memory")


def _is_oom(log_tail: str) -> bool:
    return any(w in log_tail.lower() for w in _OOM_WORDS)


def _import_numpy_meanwhile() -> None:
    """Import NumPy (~50 ms; the samplers read the logits with it) in a thread while the model loads.

    Loading and the prompt run in llama.cpp with the GIL released, so the import costs the first token
    nothing; a later ``import numpy`` waits for this one to finish (the import lock)."""
    if "numpy" not in sys.modules:
        threading.Thread(target=__import__, args=("numpy",), name="localr1-import-numpy", daemon=True).start()


_OVERRIDE_LINE = re.compile(r"tensor (?P<name>\S+) \(.*\) buffer type overridden to (?P<buft>\S+)")


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _override_array(rules: Sequence[tuple[str, str]]) -> Any:
    """llama_model_tensor_buft_override[], NULL-terminated, from (regex, device name) rules."""
    if not rules:
        return None

    by_name = {d.name.upper(): d for d in list_devices()}
    arr = (_BuftOverride * (len(rules) + 1))()
    for i, (pattern, device) in enumerate(rules):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"tensor rule {pattern!r} is not a valid regular expression: {exc}") from None
        if device.upper() == "CPU":
            buft = cpu_buffer_type()  # llama.cpp recognises this exact pointer and picks its CPU extras
        elif device.upper() in by_name:
            buft = buffer_type(by_name[device.upper()])[0]
        else:
            known = ", ".join(sorted(by_name)) or "CPU"
            raise UsageError(f"no device {device!r} in this llama.cpp build", hint=f"Devices: {known}.")
        arr[i].pattern = pattern.encode()
        arr[i].buft = buft
    return arr


_KV_LINE = re.compile(r"llama_kv_cache: size =\s*(?P<mib>[\d.]+) MiB")
_DEV_LINE = re.compile(r"(?P<dev>\S+)\s+(?P<what>compute|output|model|KV) buffer size =\s*(?P<mib>[\d.]+) MiB")


def measure_allocation(
    path: str | os.PathLike[str],
    *,
    n_ctx: int,
    n_ubatch: int = DEFAULT_BATCH,
    n_gpu_layers: int = 0,
    flash_attn: bool | None = None,
    kv_type: str = "f16",
    tensor_overrides: Sequence[tuple[str, str]] = (),
) -> dict[str, float]:
    """What llama.cpp would allocate for this model and context, in MiB, without reading any weights.

    The model is opened with ``no_alloc`` (a sparse file with only a real header works) and a context is
    reserved; llama.cpp's own accounting is read from its log. Keys: ``kv``, ``compute:<device>``,
    ``output:<device>``, ``model:<device>``, ``kv:<device>``. ``tensor_overrides``: (regex, device) rules, as
    offload mode places tensors.
    """
    lib = init_backend()
    mparams = set_fields(
        lib.llama_model_default_params(),
        no_alloc=True,
        load_mode=LOAD_MODE_NONE,
        n_gpu_layers=n_gpu_layers,
        use_extra_bufts=weight_repacking(lib),
    )
    overrides = _override_array(tensor_overrides)  # kept alive until the model is loaded
    if overrides is not None:
        set_fields(mparams, tensor_buft_overrides=ctypes.cast(overrides, ctypes.c_void_p).value)
    with _LOG.capture() as lines:
        model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelLoadError(f"llama.cpp could not open {Path(path).name}: {_LOG.tail()}")
        try:
            cparams = set_fields(
                lib.llama_context_default_params(), n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch, n_seq_max=1
            )
            _attention_fields(cparams, kv_type, flash_attn)
            ctx = lib.llama_init_from_model(model, cparams)
            if not ctx:
                raise ModelLoadError(f"llama.cpp could not reserve a {n_ctx}-token context: {_LOG.tail()}")
            lib.llama_free(ctx)
        finally:
            lib.llama_model_free(model)
    out = buffer_sizes(lines)
    for line in lines:
        if m := _KV_LINE.search(line):
            out["kv"] = float(m["mib"])
    return out


def buffer_sizes(lines: Sequence[str]) -> dict[str, float]:
    """llama.cpp's buffers from its log, in MiB: ``model:<device>``, ``KV`` as ``kv:<device>``,
    ``compute:<device>``, ``output:<device>`` (a device's buffers of one kind summed)."""
    out: dict[str, float] = {}
    for line in lines:
        if m := _DEV_LINE.search(line):
            key = f"{m['what'].lower()}:{m['dev']}"
            out[key] = out.get(key, 0.0) + float(m["mib"])
    return out


def _attention_fields(cparams: Any, kv_type: str, flash_attn: bool | None) -> Any:
    """Set a context's flash attention (None: llama.cpp decides per backend) and KV cache type; llama.cpp
    keeps a quantized V cache only with flash attention, so a quantized type turns it on."""

    check_kv_type(kv_type)  # an unknown type is a one-line error before llama.cpp sees it
    if kv_type != "f16":
        if flash_attn is False:
            raise UsageError(
                f"a {kv_type} KV cache needs flash attention", hint="Drop --flash-attn off, or use --kv-type f16."
            )
        flash_attn = True
        set_fields(cparams, type_k=KV_TYPES[kv_type][0], type_v=KV_TYPES[kv_type][0])
    if flash_attn is not None:
        set_fields(cparams, flash_attn_type=1 if flash_attn else 0)
    return cparams


class LlamaCppEngine:
    """One loaded model and one context; generations run one at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_ctx: int | None = None,
        n_gpu_layers: int | None = None,
        n_threads: int | None = None,
        n_batch: int = DEFAULT_BATCH,
        use_mmap: bool = True,
        use_mlock: bool = False,
        flash_attn: bool | None = None,
        debug: bool = False,
        gguf: GGUFInfo | None = None,
        cancel: threading.Event | None = None,
        tensor_overrides: Sequence[tuple[str, str]] = (),
        stream_interval_s: float = STREAM_INTERVAL_S,
        threadpool: bool = True,
        n_seq: int = 1,
        kv_type: str = "f16",
        main_device: str | None = None,
        speculate: str = "off",
        draft: Any = None,
    ) -> None:
        """``speculate``: off, ngram, draft or auto (engine/speculative.py); ``draft``: its DraftModel."""

        # the last stop before native code, whatever the caller: llama.cpp crashes on absurd numbers
        limits.threads(n_threads, "threads")
        limits.gpu_layers(n_gpu_layers, "GPU layers")
        limits.batch(n_batch, "batch size")
        if n_ctx is not None and n_ctx > 0:
            limits.ctx(n_ctx, "context size")
        self._lib = lib = init_backend(debug=debug)
        _import_numpy_meanwhile()
        self.stream_interval_s = stream_interval_s
        self.path = Path(path)
        header = gguf or inspect_model(self.path)  # validated in Python before llama.cpp sees it
        self._model = None
        self._ctx = None
        self._lock = threading.Lock()  # held while a generation runs: close() waits for it
        self.speculate, self.draft = _speculation(speculate, draft)
        self._closing = threading.Event()
        started = time.perf_counter()

        if n_gpu_layers is None:
            n_gpu_layers = -1 if lib.llama_supports_gpu_offload() else 0
        if n_threads is None:
            n_threads = physical_cores()
        self._load_model(header, n_gpu_layers, use_mmap, use_mlock, tensor_overrides, cancel, main_device)
        n_ctx_train = lib.llama_model_n_ctx_train(self._model)
        if n_ctx is None or n_ctx <= 0:
            n_ctx = min(n_ctx_train, 8192) if n_ctx_train > 0 else 4096
        n_batch = max(1, min(n_batch, n_ctx))
        self.kv_type = kv_type
        self._make_context(n_ctx, n_batch, n_threads, flash_attn, threadpool, n_seq)
        self.n_ctx = lib.llama_n_ctx(self._ctx)
        self.n_seq = n_seq
        self.n_batch = n_batch
        self._mem = lib.llama_get_memory(self._ctx)
        self._cached: list[int] = []  # tokens whose KV entries are in the context, for prefix reuse
        self._cancel: threading.Event | None = None
        self._abort_cb = lib.ggml_abort_callback(self._should_abort)
        self._no_abort = ctypes.cast(None, lib.ggml_abort_callback)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._token_buf = (lib.llama_token * 1)()
        self._draft_batch = lib.llama_batch_init(MAX_DRAFT + 1, 0, 1) if speculate != "off" else None
        self.draft_costs = draft_costs()  # what a drafted token costs here, kept across generations
        self._sample_s = 0.0
        self._pieces: dict[int, bytes | None] = {}  # token -> its text, None for end-of-generation tokens
        self.info = ModelInfo(
            name=header.name,
            path=self.path,
            architecture=header.architecture,
            quant=header.quant_name,
            n_ctx=self.n_ctx,
            n_ctx_train=n_ctx_train,
            chat_format=self._chat_format(header),
            n_gpu_layers=n_gpu_layers,
            n_threads=n_threads,
            load_s=time.perf_counter() - started,
            extra={"n_vocab": self.n_vocab, "n_batch": n_batch, "file_size": header.file_size},
        )

    def _load_model(self, header: GGUFInfo, n_gpu_layers: int, use_mmap: bool, use_mlock: bool,
                    tensor_overrides: Sequence[tuple[str, str]], cancel: threading.Event | None,
                    main_device: str | None = None) -> None:  # fmt: skip
        lib = self._lib
        # Loading a large model takes a while: Ctrl-C (the cancel event) aborts it through this callback.
        progress = lib.llama_progress_callback(lambda _p, _d: not (cancel is not None and cancel.is_set()))
        mparams = set_fields(
            lib.llama_model_default_params(),
            n_gpu_layers=n_gpu_layers,
            load_mode=(LOAD_MODE_MMAP_MLOCK if use_mlock else LOAD_MODE_MMAP) if use_mmap else LOAD_MODE_NONE,
            progress_callback=progress,
            use_extra_bufts=weight_repacking(lib),
        )
        # (pattern, device) rules: llama.cpp keeps a pointer to this array for the model's life
        self._overrides = _override_array(tensor_overrides)
        if self._overrides is not None:
            set_fields(mparams, tensor_buft_overrides=ctypes.cast(self._overrides, ctypes.c_void_p).value)
        if main_device is not None:  # every layer on one device (offload across machines); read during the load
            split = tensor_split(main_device)
            self._split = (ctypes.c_float * max(lib.llama_max_devices(), len(split)))(*split)
            set_fields(mparams, tensor_split=ctypes.cast(self._split, ctypes.POINTER(ctypes.c_float)))
        first = header.split_paths[0] if header.split_paths else self.path
        with _LOG.capture() as load_log:
            self._model = lib.llama_model_load_from_file(str(first).encode(), mparams)
        # where llama.cpp put each overridden tensor, as it reports it
        self.placements = {m["name"]: m["buft"] for line in load_log if (m := _OVERRIDE_LINE.search(line))}
        if not self._model and cancel is not None and cancel.is_set():
            raise KeyboardInterrupt
        if not self._model:
            reason = _LOG.tail() or "no reason given"
            unsupported = any(w in reason for w in ("unknown model architecture", "key not found", "wrong number"))
            raise (OutOfMemoryError if _is_oom(reason) else ModelLoadError)(
                f"llama.cpp could not load {self.path.name}: {reason}",
                hint="This llama.cpp does not support the file (or it is incomplete): try another GGUF build."
                if unsupported
                else "Run with --debug for llama.cpp's log; a smaller quant or fewer --gpu-layers may fit.",
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)

    def _make_context(
        self, n_ctx: int, n_batch: int, n_threads: int, flash_attn: bool | None, threadpool: bool, n_seq: int = 1
    ) -> None:
        lib = self._lib
        cparams = set_fields(
            lib.llama_context_default_params(),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            # n_seq > 1: sequences decoded together (serve's slots) in one unified KV cache of n_ctx cells;
            # engine/batching.py bounds each sequence to n_ctx / n_seq, so none crowds out another. (Separate
            # per-sequence streams decoded ~18% slower once a slot reused a cached prefix: measured on
            # r1:1.5b, 4 streams, CPU.)
            n_seq_max=n_seq,
            kv_unified=True,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            no_perf=False,
        )
        _attention_fields(cparams, self.kv_type, flash_attn)
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close(timeout=0)
            reason = _LOG.tail() or "out of memory?"
            if "does not divide" in reason:  # a quantized KV cache's blocks do not fit this model's heads
                raise UsageError(
                    f"{self.path.name} cannot keep a {self.kv_type} KV cache: its attention heads are not a "
                    "multiple of 32 values",
                    hint="Use --kv-type f16.",
                )
            raise (OutOfMemoryError if _is_oom(reason) else ModelLoadError)(
                f"llama.cpp could not create a {n_ctx}-token context for {self.path.name}: {reason}",
                hint="Try a smaller --ctx.",
            )
        self._threadpool = None
        if threadpool:
            self._threadpool = CpuThreadpool.create(n_threads)
            if self._threadpool is not None:
                attach = lib._lib["llama_attach_threadpool"]  # not in llama-cpp-python's bindings
                attach.argtypes, attach.restype = [ctypes.c_void_p] * 3, None
                attach(self._ctx, self._threadpool.handle, None)  # the same pool for prompt and generation

    def _chat_format(self, header: GGUFInfo):
        """The model's chat template (from llama.cpp's view of the file, else the header) and special tokens."""
        lib = self._lib
        template = self._meta("tokenizer.chat_template") or header.chat_template
        bos = lib.llama_vocab_bos(self._vocab)
        eos = lib.llama_vocab_eos(self._vocab)
        self._think_ids = {t for t in (self._single_token(THINK_OPEN), self._single_token(THINK_CLOSE)) if t >= 0}
        return chat_format_for(
            template,
            bos_token=self.token_text(bos) if bos >= 0 else "",
            eos_token=self.token_text(eos) if eos >= 0 else "",
            add_bos=bool(lib.llama_vocab_get_add_bos(self._vocab)),
            has_token=lambda text: self._single_token(text) >= 0,
            name=header.name,
        )

    # --- vocabulary helpers --------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.raw[:n].decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        text = self._lib.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def vocab_facts(self) -> dict[str, int]:
        """What a draft model must share with this one (engine/draft_model.check_compatible)."""
        lib, vocab = self._lib, self._vocab
        return {
            "type": lib.llama_vocab_type(vocab),
            "n_vocab": self.n_vocab,
            "bos": lib.llama_vocab_bos(vocab) if lib.llama_vocab_get_add_bos(vocab) else -1,
            "eos": lib.llama_vocab_eos(vocab),
        }

    def _single_token(self, text: str) -> int:
        toks = self.tokenize(text, add_bos=False)
        return toks[0] if len(toks) == 1 else -1

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        arr = (self._lib.llama_token * cap)()
        n = self._lib.llama_tokenize(self._vocab, raw, len(raw), arr, cap, add_bos, True)
        if n < 0:
            cap = -n
            arr = (self._lib.llama_token * cap)()
            n = self._lib.llama_tokenize(self._vocab, raw, len(raw), arr, cap, add_bos, True)
        if n < 0:
            raise EngineError("llama.cpp failed to tokenize the prompt")
        return list(arr[:n])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, add_bos=False))

    def token_piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, token in self._think_ids)
        if n < 0:
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, token in self._think_ids)
        return buf.raw[:n]

    # --- generation ----------------------------------------------------------------------------------
    def _should_abort(self, _data: Any) -> bool:
        cancel = self._cancel
        return bool(cancel is not None and cancel.is_set()) or self._closing.is_set()

    def _sampler(self, sampling: Sampling) -> Any:
        lib = self._lib
        # no_perf off: llama.cpp times its own sampling, which the benchmarks compare against
        chain = lib.llama_sampler_chain_init(set_fields(lib.llama_sampler_chain_default_params(), no_perf=False))
        add = lib.llama_sampler_chain_add
        if sampling.logit_bias:
            items = list(sampling.logit_bias.items())
            arr = (lib.llama_logit_bias * len(items))(*[lib.llama_logit_bias(t, b) for t, b in items])
            add(chain, lib.llama_sampler_init_logit_bias(self.n_vocab, len(items), arr))
        if sampling.grammar:
            grammar = lib.llama_sampler_init_grammar(self._vocab, sampling.grammar.encode(), b"root")
            if not grammar:
                lib.llama_sampler_free(chain)
                raise UsageError("the grammar does not parse", hint=_LOG.tail(2) or None)
            add(chain, grammar)
        if sampling.temperature <= 0:
            add(chain, lib.llama_sampler_init_greedy())
            return chain
        if sampling.top_k > 0:
            add(chain, lib.llama_sampler_init_top_k(sampling.top_k))
        # Temperature first, then nucleus: the order of DeepSeek's reference (transformers/vLLM) setup.
        add(chain, lib.llama_sampler_init_temp(sampling.temperature))
        if sampling.top_p < 1.0:
            add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0:
            add(chain, lib.llama_sampler_init_min_p(sampling.min_p, 1))
        seed = sampling.seed if sampling.seed is not None else lib.LLAMA_DEFAULT_SEED
        add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def prefill(self, tokens: list[int]) -> int:
        """Decode ``tokens`` after the longest prefix already in the KV cache. Returns tokens decoded (-1: the
        abort callback stopped it). A prompt, and a draft model catching up with its target."""
        lib = self._lib
        keep = min(common_prefix(self._cached, tokens), len(tokens) - 1)  # the last one: decoded for its logits
        if not lib.llama_memory_seq_rm(self._mem, 0, keep, -1):
            lib.llama_memory_clear(self._mem, True)  # this model's cache cannot be cut: start over
            keep = 0
        self._cached = tokens[:keep]
        todo = tokens[keep:]
        arr = (lib.llama_token * len(todo))(*todo)
        lib.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        try:
            for start in range(0, len(todo), self.n_batch):
                n = min(self.n_batch, len(todo) - start)
                ptr = ctypes.cast(
                    ctypes.byref(arr, start * ctypes.sizeof(lib.llama_token)), ctypes.POINTER(lib.llama_token)
                )
                rc = lib.llama_decode(self._ctx, lib.llama_batch_get_one(ptr, n))
                if rc == 2:  # aborted by the callback: the user cancelled
                    lib.llama_memory_seq_rm(self._mem, 0, keep + start, -1)
                    self._cached = tokens[: keep + start]
                    return -1
                if rc != 0:
                    raise EngineError(f"llama.cpp failed to process the prompt (code {rc}): {_LOG.tail(2)}")
                self._cached = tokens[: keep + start + n]
        finally:
            lib.llama_set_abort_callback(self._ctx, self._no_abort, None)
        return len(todo)

    def stream(self, prompt: Prompt, sampling: Sampling, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        sampling.validate()
        if self._closing.is_set() or not self._ctx:
            raise EngineError("the model was closed", hint="Load it again.")
        if not self._lock.acquire(blocking=False):
            raise EngineError("this model is already generating", hint="Wait for the current reply to finish.")
        try:
            yield from self._stream(prompt, sampling, cancel)
        finally:
            self._cancel = None
            self._lock.release()

    def _stream(self, prompt: Prompt, sampling: Sampling, cancel: threading.Event | None) -> Iterator[Event]:
        lib = self._lib
        ctx = self._ctx
        tokens = self.tokenize(prompt.text, add_bos=prompt.add_bos)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens):,} tokens but the context holds {self.n_ctx:,}",
                hint="Shorten the question or raise --ctx.",
            )
        self._cancel = cancel
        gen = Generation(
            prompt, sampling, room=self.n_ctx - len(tokens), close_token=self.think_close_token,
            interval=self.stream_interval_s,
        )  # fmt: skip
        chain, sample = self.token_chooser(sampling, gen)
        spec = Speculator(self.speculate, model=self.draft, sampling=sampling, costs=self.draft_costs)
        try:
            lib.llama_perf_context_reset(ctx)
            t0 = time.perf_counter()
            decoded = self.prefill(tokens)
            t1 = gen.t_last = time.perf_counter()
            self._sample_s = 0.0
            finish: FinishReason = "cancelled"
            if decoded >= 0:
                finish = yield from self._decode_loop(gen, chain, sample, cancel, spec)
            perf = lib.llama_perf_context(ctx)
            timings = Timings(
                load_s=self.info.load_s,
                prefill_s=t1 - t0,
                decode_s=gen.t_last - t1,
                thinking_s=gen.assembler.thinking_s,
                prompt_tokens=len(tokens),
                decode_tokens=gen.generated,
                llama_prefill_ms=perf.t_p_eval_ms,
                llama_decode_ms=perf.t_eval_ms,
                llama_decode_calls=perf.n_eval,
                sample_ms=self._sample_s * 1000,
                speculative=spec.stats if spec.active else None,
            )
            yield from gen.done(finish, prompt_tokens=len(tokens), timings=timings)
        finally:
            if chain is not None:
                lib.llama_sampler_free(chain)

    def _decode_loop(self, gen: Generation, chain: Any, sample: Any, cancel: threading.Event | None,
                     spec: Speculator) -> Generator[Event, None, FinishReason]:  # fmt: skip
        """Choose, hand on and decode tokens until the generation ends; returns why it ended.

        Each step reads the rows of logits the last decode left: one (a plain step) or, after drafts, one per
        drafted token and one more. Row i's token (drawn by the request's sampler, or by the acceptance rule
        for a draft model's sampled drafts: engine/speculative.py) is handed to ``gen`` like any token; while it
        equals draft i it is in the KV cache already and the next row follows. The first token that differs,
        or that ``gen`` does not keep as it is, ends the run: the drafts after it leave the KV cache, and the
        token is decoded with the next drafts. A plain step: one sample, a dictionary lookup, ``gen``'s decision
        and one decode (before the text is handed on: on a GPU, Python overlaps with the running graph)."""
        lib, ctx, mem = self._lib, self._ctx, self._mem
        cached = self._cached  # the tokens in the KV cache that stand (drafts join it once accepted)
        token_buf = self._token_buf
        one = lib.llama_batch_get_one(token_buf, 1)
        decode, pieces, clock = lib.llama_decode, self._pieces, time.perf_counter
        rows, drafted, dists = [-1], [], None  # the rows of logits to read, and the drafts they verify
        kv_len, t_step = len(cached), 0.0  # positions in the KV cache (drafts included); the last step's time
        while True:
            if (cancel is not None and cancel.is_set()) or self._closing.is_set():
                return "cancelled"
            if gen.full:
                return "length"
            accepted = 0
            for i, row in enumerate(rows):
                in_kv = False
                t_sample = clock()
                if dists is not None and i < len(drafted):
                    token = self._accept_sampled(ctx, row, dists[i], drafted[i], sample)
                else:
                    token = sample(chain, ctx, row)
                self._sample_s += clock() - t_sample
                piece = pieces.get(token, _UNSEEN)
                if piece is _UNSEEN:
                    piece = self._learn_piece(token)
                step = gen.choose(token, piece)
                if i < len(drafted) and token == drafted[i]:  # decoded already, as a draft
                    accepted += 1
                    in_kv = step.decode
                    if in_kv:
                        cached.append(token)
                    if in_kv and step.append is None and step.finish is None:
                        yield from step.events
                        continue
                break
            spec.verified(len(drafted), accepted, t_step)
            if kv_len > len(cached):  # the drafts after the run leave the KV cache
                lib.llama_memory_seq_rm(mem, 0, len(cached), -1)
                kv_len = len(cached)
            rows, drafted, dists = [-1], [], None
            if step.decode and not in_kv:
                t_start = clock()
                cached.append(token)
                if step.append is None and step.finish is None and spec.active:
                    room = min(gen.budget - gen.generated - 1, self.n_ctx - len(cached) - 1, MAX_DRAFT)
                    drafted, dists = spec.propose(cached, room)
                if drafted:
                    rc = self._decode_drafts(token, drafted, len(cached) - 1)
                    rows = list(range(len(drafted) + 1))
                else:
                    token_buf[0] = token
                    rc = decode(ctx, one)
                t_step = clock() - t_start
                if rc != 0:
                    cached.pop()
                    if rc == 1:  # no room left in the KV cache
                        return "length"
                    yield from gen.flush()
                    raise EngineError(f"llama.cpp failed while generating (code {rc}): {_LOG.tail(2)}")
                kv_len = len(cached) + len(drafted)
            if step.events:
                yield from step.events
            if step.append is not None:
                appended = self._append(gen, step.append)
                if appended is None:  # no room for it
                    return "length"
                kv_len = len(cached)
                yield from appended
            if step.finish is not None:
                return step.finish

    def _decode_drafts(self, token: int, drafts: list[int], pos: int) -> int:
        """Decode ``token`` at ``pos`` and the drafts after it, every row's logits kept; llama_decode's code."""
        batch = self._draft_batch
        for j, t in enumerate((token, *drafts)):
            put_token(batch, j, t, pos + j, 0, True)
        batch.n_tokens = len(drafts) + 1
        return self._lib.llama_decode(self._ctx, batch)

    def _accept_sampled(self, ctx: Any, row: int, q: Any, draft: int, sample: Any) -> int:
        """The token at ``row`` for a draft the draft model sampled from ``q``: the standard acceptance rule
        over the target's nucleus distribution (engine/speculative.py)."""
        return accept(sample.distribution(ctx, row), q, draft, sample.rng)[1]

    def decode_one(self, token: int) -> None:
        """Decode one token after the cache (a draft model's drafts; the decode loop inlines this)."""
        self._token_buf[0] = token
        rc = self._lib.llama_decode(self._ctx, self._lib.llama_batch_get_one(self._token_buf, 1))
        if rc != 0:
            raise EngineError(f"llama.cpp failed while generating (code {rc}): {_LOG.tail(2)}")
        self._cached.append(token)

    def think_close_token(self) -> int:
        """The end-of-thinking token, which a thinking budget needs to see and to write."""
        ids = self.tokenize(THINK_CLOSE, add_bos=False)
        if len(ids) != 1:
            raise UsageError(
                f"{self.info.name} has no {THINK_CLOSE} token, so a thinking budget cannot apply",
                hint="Thinking budgets are for R1 models; drop --think-budget / --think-min.",
            )
        return ids[0]

    def _append(self, gen: Generation, text: str) -> list[Event] | None:
        """Append ``text`` for a thinking budget: its tokens decoded into the KV cache, and their events
        (marked forced); None when they do not fit (nothing is decoded then)."""
        ids, events = self.appended(gen, text)
        if events is None:
            return None
        arr = (self._lib.llama_token * len(ids))(*ids)
        rc = self._lib.llama_decode(self._ctx, self._lib.llama_batch_get_one(arr, len(ids)))
        if rc != 0:
            raise EngineError(f"llama.cpp failed while generating (code {rc}): {_LOG.tail(2)}")
        self._cached.extend(ids)
        return events

    def appended(self, gen: Generation, text: str) -> tuple[list[int], list[Event] | None]:
        """The tokens of a text a thinking budget appends, and what ``gen`` makes of them: their events, or
        None when they do not fit (the plain and the batched engine then decode them each their own way)."""
        ids = self.tokenize(text, add_bos=False)
        return ids, gen.append([self.token_piece(t) for t in ids])

    def token_chooser(self, sampling: Sampling, gen: Generation | None = None) -> tuple[Any, Any]:
        """How tokens are chosen for these settings, for one generation: (llama.cpp sampler chain, or None;
        ``sample(chain, ctx, idx)`` -> token). Without a grammar no chain is needed: llama_sampler_sample fills
        a candidate array for the whole vocabulary every token (and its top-p sorts it); an argmax, or
        localr1.engine.nucleus, reads llama.cpp's logits in place instead. The caller frees the chain.
        With an answer grammar, ``gen`` says when the thinking ended: the grammar's chain chooses from then on
        (engine/structured.py)."""
        if sampling.answer_grammar:
            free = replace(sampling, answer_grammar=None)
            chain = self._sampler(replace(free, grammar=sampling.answer_grammar))
            draw = self.token_chooser(free)[1]
            return chain, _AfterThinking(gen, draw, self._constrained(draw, bool(sampling.logit_bias)))
        if sampling.grammar:
            draw = self.token_chooser(replace(sampling, grammar=None))[1]
            return self._sampler(sampling), self._constrained(draw, bool(sampling.logit_bias))
        if sampling.temperature <= 0:
            return None, self._greedy(sampling)
        return None, self._nucleus(sampling)

    def _constrained(self, draw: Any = None, biased: bool = False):
        """A sample(chain, ctx, idx) for a chain with a grammar.

        First the token is drawn as without the grammar (``draw``: the argmax or nucleus choice on the logits
        in place) and the grammar alone is asked about that one token; most of the time it allows it and that
        is the token, as llama.cpp's own sampler does it (common_sampler: "grammar-based rejection sampling").
        Matching a grammar against all 152k token texts takes ~19 ms a token with R1's vocabulary, the whole
        cost of a structured answer; one token's check takes microseconds.

        Where the grammar refuses it: llama_sampler_sample's own steps (every token's logit, the chain applied,
        the chosen token accepted), except that a token the grammar does not allow is refused before the chain
        accepts it. That is what the chain chooses when every token the grammar permits is banned (a logit bias
        of -100, an end the grammar needs made impossible): llama.cpp's grammar then throws inside
        llama_sampler_accept, through its C API, and the process aborts, a server with every other request in
        it. Here it is a UsageError for the request that asked for it."""
        import numpy as np

        lib, n_vocab = self._lib, self.n_vocab
        read = self.logits_reader()
        data = (lib.llama_token_data * n_vocab)()
        view = np.frombuffer(data, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        ids = np.arange(n_vocab, dtype=np.int32)
        cur = lib.llama_token_data_array(data, n_vocab, -1, False)
        ref = ctypes.byref(cur)
        apply, accept, isfinite = lib.llama_sampler_apply, lib.llama_sampler_accept, math.isfinite
        one = (lib.llama_token_data * 1)()
        single = lib.llama_token_data_array(one, 1, -1, False)
        single_ref = ctypes.byref(single)
        grammar_at = 1 if biased else 0  # the grammar's place in the chain (_sampler: the logit bias first)

        def sample(chain, ctx, idx) -> int:
            if draw is not None:
                token = draw(None, ctx, idx)
                one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
                single.data, single.size, single.selected, single.sorted = one, 1, -1, False
                apply(lib.llama_sampler_chain_get(chain, grammar_at), single_ref)
                if isfinite(one[0].logit):
                    accept(chain, token)
                    return token
            view["id"] = ids  # samplers sort the array in place: every step starts from the vocabulary order
            view["logit"] = read(ctx, idx)
            view["p"] = 0.0
            cur.data, cur.size, cur.selected, cur.sorted = data, n_vocab, -1, False
            apply(chain, ref)
            chosen = cur.selected
            if not 0 <= chosen < cur.size or not isfinite(cur.data[chosen].logit):
                raise UsageError(
                    "the grammar allows no token here: every token it permits is banned",
                    hint="Drop the logit_bias (or stop rule) that bans what the grammar needs next.",
                )
            token = cur.data[chosen].id
            accept(chain, token)
            return token

        return sample

    # --- what the batched engine (engine/batching.py) drives the context with ---------------------------
    @property
    def lib(self) -> Any:
        """llama.cpp's ctypes bindings."""
        return self._lib

    @property
    def context(self) -> Any:
        return self._ctx

    @property
    def memory(self) -> Any:
        """The context's KV cache (llama_memory_t)."""
        return self._mem

    @property
    def lock(self) -> threading.Lock:
        """Held by whoever drives the context; close() waits for it."""
        return self._lock

    @property
    def abort_callback(self) -> Any:
        """llama.cpp's abort callback: a long decode stops when the engine closes."""
        return self._abort_cb

    def stop(self) -> None:
        """Make a decode in progress stop through the abort callback (before close())."""
        self._closing.set()

    def piece(self, token: int) -> bytes | None:
        """The token's text, or None for an end-of-generation token (remembered for the model's life)."""
        piece = self._pieces.get(token, _UNSEEN)
        return self._learn_piece(token) if piece is _UNSEEN else piece

    def _learn_piece(self, token: int) -> bytes | None:
        """The token's text, or None for an end-of-generation token; remembered for the model's life."""
        piece = None if self._lib.llama_vocab_is_eog(self._vocab, token) else self.token_piece(token)
        self._pieces[token] = piece
        return piece

    def logits_reader(self):
        """A function (ctx, idx) -> llama.cpp's logits for output ``idx`` as a float32 NumPy view (no copy).

        The view is made once per buffer address (llama.cpp keeps its output buffer until it needs a larger
        one): building it each token cost more than an argmax.
        """
        import numpy as np

        n_vocab = self.n_vocab
        # A private prototype returning the address as an int (the shared one returns a ctypes pointer)
        get_logits = self._lib._lib["llama_get_logits_ith"]
        get_logits.restype, get_logits.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int32]
        views: dict[int, Any] = {}

        def read(ctx, idx) -> Any:
            address = get_logits(ctx, idx)
            logits = views.get(address)
            if logits is None:
                if not address:
                    raise EngineError("llama.cpp returned no logits", hint=_LOG.tail(2) or None)
                views.clear()
                logits = views[address] = np.frombuffer((ctypes.c_float * n_vocab).from_address(address), np.float32)
            return logits

        return read

    def _greedy(self, sampling: Sampling):
        """A sample(chain, ctx, idx) stand-in: argmax of the last logits, with the logit biases applied."""
        import numpy as np

        read = self.logits_reader()
        n_vocab = self.n_vocab
        biases = [(t, b) for t, b in sampling.logit_bias.items() if 0 <= t < n_vocab and b != float("-inf")]
        # Banned tokens (bias -inf, e.g. end of stream in `bench`) cost nothing unless the argmax lands on one.
        banned = [t for t, b in sampling.logit_bias.items() if 0 <= t < n_vocab and b == float("-inf")]
        banned_set = frozenset(banned)

        def sample(_chain, ctx, idx) -> int:
            logits = read(ctx, idx)
            for token, bias in biases:
                logits[token] += bias
            token = int(logits.argmax())
            if token in banned_set:
                logits[banned] = -np.inf
                token = int(logits.argmax())
            return token

        return sample

    def _nucleus(self, sampling: Sampling):
        """A sample(chain, ctx, idx) stand-in: temperature, top-k, top-p and min-p by ``localr1.engine.nucleus``
        (with ``distribution(ctx, idx)`` and ``rng`` for speculative decoding's acceptance rule)."""
        from localr1.engine.nucleus import NucleusSampler

        return _NucleusChoice(NucleusSampler.for_sampling(self.n_vocab, sampling), self.logits_reader())

    def end_tokens(self) -> list[int]:
        """End-of-sequence and end-of-turn tokens (to bias off where a fixed length is wanted)."""
        lib = self._lib
        return [t for t in (lib.llama_vocab_eos(self._vocab), lib.llama_vocab_eot(self._vocab)) if t >= 0]

    def reset(self) -> None:
        """Forget the KV cache (the next prompt is processed from its first token)."""
        self._lib.llama_memory_clear(self._mem, True)
        self._cached = []

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Free the context and the model, in that order, after any generation in another thread stopped.

        A generation running elsewhere (a chat quitting mid-reply) is asked to stop (it checks between
        tokens, and llama.cpp's abort callback inside a long prompt) and waited for: freeing the model
        under a running decode was a segfault. If it does not stop within ``timeout`` the memory is left
        to the process's exit rather than freed under it.
        """
        self._closing.set()
        if not self._lock.acquire(timeout=timeout):
            return
        try:
            self._free()
        finally:
            self._lock.release()

    def _free(self) -> None:
        lib = self._lib
        if getattr(self, "draft", None) is not None:
            self.draft.close()
            self.draft = None
        if getattr(self, "_draft_batch", None) is not None:
            lib.llama_batch_free(self._draft_batch)
            self._draft_batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_threadpool", None) is not None:  # after the context that used it
            self._threadpool.close()
            self._threadpool = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close(timeout=0)


def _speculation(mode: str, draft: Any) -> tuple[str, Any]:
    if mode not in MODES:
        raise UsageError(f"--speculate {mode!r} is not one of {', '.join(MODES)}")
    if mode == "draft" and draft is None:
        raise UsageError("--speculate draft needs a draft model", hint="Give --draft MODEL, or use --speculate ngram.")
    return mode, draft


def put_token(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    """Row ``i`` of a ``llama_batch``: ``token`` at ``pos`` of sequence ``seq``, its logits kept or not."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits


class _AfterThinking:
    """``sample(chain, ctx, idx)`` that draws freely while the generation thinks and through the grammar's chain
    once it answers (``Generation.answering``)."""

    __slots__ = ("gen", "free", "constrained")

    def __init__(self, gen: Generation | None, free: Any, constrained: Any) -> None:
        self.gen, self.free, self.constrained = gen, free, constrained

    def __call__(self, chain: Any, ctx: Any, idx: int) -> int:
        if self.gen is None or self.gen.answering:
            return self.constrained(chain, ctx, idx)
        return self.free(None, ctx, idx)


class _NucleusChoice:
    """``sample(chain, ctx, idx)`` for the nucleus sampler, and the explicit distribution at a row."""

    __slots__ = ("sampler", "read", "rng")

    def __init__(self, sampler: Any, read: Any) -> None:
        self.sampler, self.read, self.rng = sampler, read, sampler.rng

    def __call__(self, _chain: Any, ctx: Any, idx: int) -> int:
        return self.sampler(self.read(ctx, idx))

    def distribution(self, ctx: Any, idx: int) -> Any:
        return self.sampler.distribution(self.read(ctx, idx))
