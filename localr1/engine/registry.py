"""Engines by name: how ``loader.load_engine`` finds the one to open.

``llama.cpp`` (the real engine) is registered here, imported only when a model is opened; the scripted
``FakeEngine`` registers itself as ``fake`` the same way, so tests (and plug-ins) swap engines without
patching the loader. A factory takes ``(path, header, EngineOptions, cancel)`` and returns an ``Engine``:
llama.cpp's is a ``BatchedEngine`` when more than one sequence is asked for (``serve --parallel N``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from localr1.engine.batching import BatchedEngine
from localr1.engine.draft_model import DraftModel, check_compatible
from localr1.engine.llama_cpp import DEFAULT_BATCH, LlamaCppEngine
from localr1.errors import UsageError

Factory = Callable[..., Any]
_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    _FACTORIES[name] = factory


# Engines in the package that register themselves when imported (imported on first use, by name).
_BUILT_IN = {"fake": "localr1.engine.fake"}


def get(name: str) -> Factory:
    if name not in _FACTORIES and name in _BUILT_IN:
        importlib.import_module(_BUILT_IN[name])
    if name not in _FACTORIES:
        known = ", ".join(sorted({*_FACTORIES, *_BUILT_IN}))
        raise UsageError(f"no engine named {name!r}", hint=f"Known engines: {known}.")
    return _FACTORIES[name]


def _llama_cpp(path, header, options, cancel=None):

    draft = _draft(options, cancel) if options.draft is not None and options.n_seq == 1 else None
    try:
        engine = _target(path, header, options, cancel, draft)
    except BaseException:
        if draft is not None:
            draft.close()
        raise
    if options.n_seq > 1:  # several sequences: requests from many threads decode together, one batch a step
        return BatchedEngine(engine)
    return engine


def _draft(options, cancel):
    """The draft model (engine/draft_model.py), in a context as long as the target's."""
    engine = LlamaCppEngine(
        options.draft, n_ctx=options.n_ctx, n_threads=options.n_threads, n_gpu_layers=options.draft_gpu_layers,
        flash_attn=options.flash_attn, debug=options.debug, cancel=cancel,
    )  # fmt: skip
    return DraftModel(engine)


def _target(path, header, options, cancel, draft):
    engine = LlamaCppEngine(
        path,
        n_ctx=options.n_ctx * options.n_seq if options.n_ctx else None,
        n_seq=options.n_seq,
        kv_type=options.kv_type,
        n_threads=options.n_threads,
        n_gpu_layers=options.n_gpu_layers,
        n_batch=options.n_batch or DEFAULT_BATCH,
        flash_attn=options.flash_attn,
        debug=options.debug,
        gguf=header,
        cancel=cancel,
        tensor_overrides=options.tensor_overrides,
        use_mlock=options.mlock,
        main_device=options.main_device,
        speculate=options.speculate if draft is not None or options.speculate != "draft" else "ngram",
        draft=draft,
    )
    if draft is not None:
        try:
            check_compatible(engine, draft.engine)  # one line, before the first token, naming what differs
        except BaseException:
            engine.close()
            raise
    return engine


register("llama.cpp", _llama_cpp)
