"""Validated headers kept on disk between runs: used only while every file is unchanged."""

from __future__ import annotations

import os

import pytest
from ggufs import write_gguf

from localr1.errors import InvalidModelFileError
from localr1.models import gguf_info, header_cache
from localr1.models.gguf_info import inspect_model


def _next_run(monkeypatch) -> list[str]:
    """Forget the in-memory cache, as a new process would, and record every header actually read."""
    gguf_info._INSPECTED.clear()
    reads: list[str] = []
    original = gguf_info.read_gguf

    def recording(path, **kw):
        reads.append(os.path.basename(path))
        return original(path, **kw)

    monkeypatch.setattr(gguf_info, "read_gguf", recording)
    return reads


def test_the_next_run_reads_no_header(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", template="{{ messages }}")
    first = inspect_model(path)
    reads = _next_run(monkeypatch)
    again = inspect_model(path)
    assert reads == [] and again == first
    assert again.chat_template == "{{ messages }}" and again.tensors[1].shape == (64, 2)


def test_a_real_r1_style_header_round_trips(tiny_r1, monkeypatch):
    first = inspect_model(tiny_r1)
    reads = _next_run(monkeypatch)
    again = inspect_model(tiny_r1)
    assert reads == [] and again == first
    tokens = again.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, gguf_info.ArraySummary) and tokens.length == 152064
    assert again.quant_name == first.quant_name and again.n_params == first.n_params


def test_a_changed_file_is_read_again(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", n_tensors=2)
    assert len(inspect_model(path).tensors) == 2
    write_gguf(tmp_path / "m.gguf", n_tensors=3)  # rewritten in place: new size, time and contents
    reads = _next_run(monkeypatch)
    assert len(inspect_model(path).tensors) == 3 and reads == ["m.gguf"]


def test_a_changed_shard_invalidates_a_split_model(tmp_path, monkeypatch):
    first = write_gguf(tmp_path / "m-00001-of-00002.gguf")
    write_gguf(tmp_path / "m-00002-of-00002.gguf", n_tensors=1)
    assert len(inspect_model(first).tensors) == 3
    write_gguf(tmp_path / "m-00002-of-00002.gguf", n_tensors=2)
    reads = _next_run(monkeypatch)
    assert len(inspect_model(first).tensors) == 4 and reads == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    gguf_info._INSPECTED.clear()
    with pytest.raises(InvalidModelFileError, match="is missing"):
        inspect_model(first)


def test_an_unreadable_entry_is_dropped_and_rebuilt(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    inspect_model(path)
    (entry,) = (header_cache.cache_dir() / "headers").glob("*.json")
    entry.write_text('{"key": [1, ')
    reads = _next_run(monkeypatch)
    assert len(inspect_model(path).tensors) == 2 and reads == ["m.gguf"]
    assert entry.read_text().startswith('{"key"') and entry.stat().st_size > 100  # written again


def test_an_unwritable_cache_costs_only_the_read(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LOCALR1_CACHE_DIR", str(blocker))
    path = write_gguf(tmp_path / "m.gguf")
    assert len(inspect_model(path).tensors) == 2
    reads = _next_run(monkeypatch)
    assert len(inspect_model(path).tensors) == 2 and reads == ["m.gguf"]
