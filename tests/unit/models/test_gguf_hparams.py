"""Model metadata that passes the header check but is nonsense never reaches llama.cpp.

A block_count of 0 or 600, a NaN context length, an array where a number belongs: each was an abort inside
llama.cpp or an "internal error". ``inspect_model`` (which every load goes through) refuses them in one
line that names the key.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from localr1.cli.app import app
from localr1.errors import InvalidModelFileError
from localr1.models.gguf_info import inspect_model


def _model(path, put, *, layers=2, tensors_in_layers=2):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("hostile")
    keys = {"llama.context_length": 2048, "llama.block_count": layers, "llama.embedding_length": 64}
    for key, value in keys.items():
        if key not in put:
            writer.add_uint32(key, value)
    for key, (kind, value) in put.items():
        getattr(writer, f"add_{kind}")(key, value)
    for i in range(tensors_in_layers):
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BAD = {
    "no layers": {"llama.block_count": ("uint32", 0)},
    "600 layers": {"llama.block_count": ("uint32", 600)},
    "NaN context": {"llama.context_length": ("float32", math.nan)},
    "float context": {"llama.context_length": ("float32", 4096.0)},
    "context as a string": {"llama.context_length": ("string", "4096")},
    "context as an array": {"llama.context_length": ("array", [1, 2, 3])},
    "negative heads": {"llama.attention.head_count": ("int32", -4)},
    "per-layer array of the wrong length": {"llama.feed_forward_length": ("array", [128, 128, 128])},
    "per-layer array of strings": {"llama.attention.head_count": ("array", ["a", "b"])},
    "NaN rope base": {"llama.rope.freq_base": ("float32", math.nan)},
    "zero rope base": {"llama.rope.freq_base": ("float32", 0.0)},
    "infinite epsilon": {"llama.attention.layer_norm_rms_epsilon": ("float32", math.inf)},
    "more experts used than exist": {"llama.expert_count": ("uint32", 4), "llama.expert_used_count": ("uint32", 8)},
    "architecture as a number": {"general.architecture": ("uint32", 7)},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_nonsense_metadata_is_refused_in_one_line(tmp_path, case):
    path = _model(tmp_path / "m.gguf", BAD[case])
    with pytest.raises(InvalidModelFileError, match="is corrupt: metadata") as err:
        inspect_model(path)
    assert "\n" not in err.value.message


def test_tensors_past_block_count_are_refused(tmp_path):
    path = _model(tmp_path / "m.gguf", {}, layers=1, tensors_in_layers=3)
    with pytest.raises(InvalidModelFileError, match=r"blk\.1\.attn_q\.weight belongs to a layer past"):
        inspect_model(path)


def test_sane_metadata_passes(tmp_path):
    put = {
        "llama.feed_forward_length": ("array", [128, 256]),
        "llama.attention.head_count": ("uint32", 4),
        "llama.rope.freq_base": ("float32", 10000.0),
    }
    info = inspect_model(_model(tmp_path / "m.gguf", put))
    assert info.metadata["llama.feed_forward_length"] == [128, 256]  # per-layer arrays are read in full


def test_a_tampered_header_cache_is_checked_too(tmp_path):
    """The header cache is a file the app reads back: a corrupt value in it is caught like one in the model."""
    import json

    from localr1.models import header_cache

    path = _model(tmp_path / "m.gguf", {})
    inspect_model(path)
    from localr1.models import gguf_info

    gguf_info._INSPECTED.clear()
    for entry in header_cache._folder().glob("*.json"):
        raw = json.loads(entry.read_text())
        raw["value"]["metadata"]["llama.block_count"] = 100000
        entry.write_text(json.dumps(raw))
    with pytest.raises(InvalidModelFileError, match="block_count"):
        inspect_model(path)


@pytest.mark.parametrize("case", ["600 layers", "NaN context", "context as an array"])
def test_ask_on_such_a_model_is_one_line_and_never_crashes(runner, tmp_path, case):
    path = _model(tmp_path / "m.gguf", BAD[case])
    result = runner.invoke(app, ["ask", "hi", "-m", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: m.gguf is corrupt: metadata") and "internal error" not in result.stderr
