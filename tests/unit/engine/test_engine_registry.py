"""Engines are found by name, both engines provide the whole Engine protocol, and out-of-memory is a type."""

from __future__ import annotations

from pathlib import Path

import pytest

from localr1.engine import registry
from localr1.engine.base import Engine
from localr1.engine.fake import FakeEngine
from localr1.errors import ModelLoadError, OutOfMemoryError, UsageError
from localr1.loader import EngineOptions, load_engine


def test_the_fake_engine_is_registered_like_any_engine():
    engine = load_engine(Path("tiny.gguf"), None, EngineOptions(n_ctx=2048, engine="fake"))
    assert isinstance(engine, FakeEngine) and engine.info.name == "tiny.gguf" and engine.info.n_ctx == 2048


def test_an_unknown_engine_is_a_usage_error():
    with pytest.raises(UsageError, match="no engine named 'nope'"):
        registry.get("nope")


def test_both_engines_provide_the_protocol():
    from localr1.engine.llama_cpp import LlamaCppEngine

    assert isinstance(FakeEngine(), Engine)
    members = ("stream", "count_tokens", "tokenize", "end_tokens", "reset", "close")
    assert all(callable(getattr(LlamaCppEngine, m, None)) for m in members)
    assert all(callable(getattr(FakeEngine, m, None)) for m in members)


@pytest.mark.parametrize(
    "log, oom",
    [
        (
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 8000 MiB on device 0: cudaMalloc failed: out of memory",
            True,
        ),
        ("llama_model_load: error loading model: failed to allocate buffer", True),
        ("llama_model_load: error loading model: unknown model architecture: 'foo'", False),
    ],
)
def test_the_engine_types_out_of_memory(log, oom):
    from localr1.engine.llama_cpp import _is_oom

    assert _is_oom(log) is oom
    assert issubclass(OutOfMemoryError, ModelLoadError)  # callers that catch load errors still catch it
