"""Fixtures for the server tests: the tiny R1-tokenizer model behind a real server on 127.0.0.1."""

from __future__ import annotations

import pytest

SLOTS = 4


@pytest.fixture(scope="module")
def batched(tiny_r1):
    """The tiny R1 model opened as `serve` opens it: 4 sequences in one context, batched."""
    from localr1.engine.batching import BatchedEngine
    from localr1.engine.llama_cpp import LlamaCppEngine

    engine = BatchedEngine(LlamaCppEngine(tiny_r1, n_ctx=SLOTS * 1024, n_seq=SLOTS, n_threads=2))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(batched):
    from servers import running

    with running(batched, "tiny-r1", queue=2) as srv:
        yield srv
