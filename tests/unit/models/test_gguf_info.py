"""Untrusted GGUF headers: every bad input is one InvalidModelFileError, never a crash or a huge allocation."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from ggufs import write_gguf

from localr1.errors import InvalidModelFileError
from localr1.models.gguf_info import inspect_model, read_gguf, split_siblings


def test_reads_a_valid_file(small_gguf):
    info = read_gguf(small_gguf)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.name == "test model"
    assert info.context_length == 2048
    assert [t.name for t in info.tensors] == ["blk.0.t0.weight", "blk.0.t1.weight"]
    assert info.tensors[1].shape == (64, 2)
    assert info.tensor_bytes == 64 * 4 + 128 * 4
    assert info.n_params == 192
    assert info.quant_name == "F32"


def test_real_r1_7b_header(r1_header):
    info = read_gguf(r1_header, check_data=False)
    assert info.architecture == "qwen2"
    assert info.block_count == 28
    assert info.context_length == 131072
    assert info.quant_name == "Q4_K_M"
    assert len(info.tensors) == 339
    assert info.get("tokenizer.ggml.tokens").length == 152064
    assert "<｜Assistant｜>" in info.chat_template
    # about 7.6 billion parameters, 4.7 GB of tensors
    assert 7.5e9 < info.n_params < 7.7e9
    assert 4.6e9 < info.tensor_bytes < 4.8e9


def test_cut_download_is_reported_as_truncated(r1_header):
    with pytest.raises(InvalidModelFileError, match="is truncated") as exc:
        read_gguf(r1_header)
    assert "download" in exc.value.hint


def test_not_gguf(tmp_path):
    for content in (b"", b"GG", b"PK\x03\x04 a zip file", b"GGML" + b"\0" * 100):
        path = tmp_path / "x.gguf"
        path.write_bytes(content)
        with pytest.raises(InvalidModelFileError, match="not a GGUF file"):
            read_gguf(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InvalidModelFileError, match="does not exist"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(InvalidModelFileError, match="directory"):
        read_gguf(tmp_path)


def test_truncated_at_every_offset_of_the_header(small_gguf, tmp_path):
    data = small_gguf.read_bytes()
    header_end = read_gguf(small_gguf).data_offset
    cut = tmp_path / "cut.gguf"
    for n in range(4, header_end + 8):
        cut.write_bytes(data[:n])
        with pytest.raises(InvalidModelFileError):
            read_gguf(cut)


def test_truncated_tensor_data(small_gguf, tmp_path):
    data = small_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-1])
    with pytest.raises(InvalidModelFileError, match="truncated"):
        read_gguf(cut)


def _patched(src, tmp_path, offset, fmt, value):
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path = tmp_path / "patched.gguf"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (4, "<I", 1, "version 1"),
        (4, "<I", 99, "version 99"),
        (8, "<Q", 2**60, "tensors"),
        (16, "<Q", 2**40, "metadata entries"),
        (24, "<Q", 2**62, "claims"),  # length of the first key
    ],
)
def test_absurd_header_values(small_gguf, tmp_path, offset, fmt, value, message):
    with pytest.raises(InvalidModelFileError, match=message):
        read_gguf(_patched(small_gguf, tmp_path, offset, fmt, value))


def test_random_corruption_never_crashes(small_gguf, tmp_path):
    data = small_gguf.read_bytes()
    header_end = read_gguf(small_gguf).data_offset
    rng = random.Random(7)
    path = tmp_path / "fuzz.gguf"
    for _ in range(300):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(4, header_end)] = rng.randrange(256)
        path.write_bytes(bytes(buf))
        with contextlib.suppress(InvalidModelFileError):  # anything else fails the test
            read_gguf(path)


def test_split_models(tmp_path):
    first = write_gguf(tmp_path / "m-00001-of-00002.gguf")
    assert split_siblings(first) == [first, tmp_path / "m-00002-of-00002.gguf"]
    with pytest.raises(InvalidModelFileError, match="m-00002-of-00002.gguf is missing"):
        inspect_model(first)
    write_gguf(tmp_path / "m-00002-of-00002.gguf", n_tensors=1)
    info = inspect_model(first)
    assert len(info.tensors) == 3
    assert info.split_paths[1].name == "m-00002-of-00002.gguf"
    assert split_siblings(tmp_path / "plain.gguf") == [tmp_path / "plain.gguf"]


def _string_array_file(tmp_path, items, cut=0):
    import gguf

    path = tmp_path / "arr.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("test.strings", items or ["a"])
    writer.add_string("test.after", "still read")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if not items:  # the gguf writer refuses empty arrays, other writers do not: make one by hand
        data = bytearray(path.read_bytes())
        count_at = data.index(b"test.strings") + len(b"test.strings") + 8  # after value and element types
        struct.pack_into("<Q", data, count_at, 0)
        del data[count_at + 8 : count_at + 8 + 9]  # the one element: length 1 + "a"
        path.write_bytes(bytes(data))
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return path


def test_skipped_string_arrays(tmp_path):
    info = read_gguf(_string_array_file(tmp_path, []))
    assert info.get("test.strings").length == 0 and info.get("test.after") == "still read"
    info = read_gguf(_string_array_file(tmp_path, ["a", "ü", "<think>"]))
    assert info.get("test.strings").length == 3 and info.get("test.after") == "still read"
    kept = read_gguf(_string_array_file(tmp_path, ["a", "ü", "<think>"]), keep_arrays=["test.strings"])
    assert kept.get("test.strings") == ["a", "ü", "<think>"]
    path = _string_array_file(tmp_path, ["x" * 100] * 5)
    data = path.read_bytes()
    start = data.index(b"test.strings")
    for n in range(start, start + 5 * 108 + 24, 7):  # cut inside the array
        path.write_bytes(data[:n])
        with pytest.raises(InvalidModelFileError):
            read_gguf(path)


def test_ggml_type_table_matches_the_gguf_package():
    """localr1 keeps its own copy of ggml's type table (no gguf import at start-up); it must not drift."""
    import gguf.constants as c

    from localr1.models.gguf_info import GGML_TYPES

    theirs = {int(t): (t.name, *c.GGML_QUANT_SIZES[t]) for t in c.GGMLQuantizationType if t in c.GGML_QUANT_SIZES}
    ours = {k: v for k, v in GGML_TYPES.items() if k in theirs}
    assert ours == theirs, "update GGML_TYPES in localr1/models/gguf_info.py from gguf.constants"


def test_a_type_newer_than_the_table_is_looked_up_in_gguf(monkeypatch):
    from localr1.models import gguf_info

    q4k = gguf_info.GGML_TYPES[12]
    monkeypatch.delitem(gguf_info.GGML_TYPES, 12)
    assert gguf_info.ggml_type_name(12) == "Q4_K" and gguf_info.GGML_TYPES[12] == q4k
    assert gguf_info.tensor_nbytes(12, (512, 2)) == 2 * 144 * 2
    assert gguf_info.ggml_type_name(9999) == "type9999"
