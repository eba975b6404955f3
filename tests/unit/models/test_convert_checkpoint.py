"""The converter's checkpoint reader and pre-tokenizer naming, without PyTorch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from localr1.errors import InvalidModelFileError, UsageError
from localr1.models.convert.architectures import gguf_arch, permute, plan_tensors
from localr1.models.convert.checkpoint import open_checkpoint, read_safetensors_header
from localr1.models.convert.vocab import KNOWN_SPLITS, _split_regexes


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_reads_f32_f16_and_widens_bf16_exactly(tmp_path):
    values = np.array([[1.5, -2.25], [2.0**-9, 65280.0]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # these values are exact in bf16
    write_safetensors(
        tmp_path / "model.safetensors",
        {"b": ("BF16", bf16), "a": ("F32", values), "c": ("F16", values.astype(np.float16))},
    )
    refs = read_safetensors_header(tmp_path / "model.safetensors")
    assert list(refs) == ["a", "b", "c"]  # sorted, as the safetensors library orders them
    assert refs["a"].load().dtype == np.float32 and np.array_equal(refs["a"].load(), values)
    assert refs["b"].load().dtype == np.float32 and np.array_equal(refs["b"].load(), values)
    assert refs["c"].load().dtype == np.float16


def test_truncation_anywhere_is_a_clear_error(tmp_path):
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"w": ("F32", np.arange(12, dtype=np.float32).reshape(3, 4))})
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises(InvalidModelFileError):
            read_safetensors_header(bad)


def test_lying_offsets_and_dtypes_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    for header, error in (
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, InvalidModelFileError),  # size mismatch
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, InvalidModelFileError),  # past the end
        ({"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, UsageError),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, InvalidModelFileError),
        ([1, 2], InvalidModelFileError),
    ):
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8))
        with pytest.raises(error):
            read_safetensors_header(path)


def test_index_must_match_the_shards(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F32", np.zeros(2, np.float32))})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="model-00002-of-00002.safetensors is missing"):
        open_checkpoint(tmp_path)
    index["weight_map"]["b"] = "../outside.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidModelFileError, match="outside the folder"):
        open_checkpoint(tmp_path)


def test_pickles_are_refused_without_the_flag(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UsageError, match="can run code"):
        open_checkpoint(tmp_path)


def test_unsupported_architecture_and_unmappable_tensors():
    with pytest.raises(UsageError, match="MistralForCausalLM"):
        gguf_arch("MistralForCausalLM")
    hp = {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": 8}
    plan = plan_tensors(["model.layers.0.self_attn.k_proj.weight", "lm_head.weight"], lambda n: (4, 8), "llama", hp)
    assert [(r.name, r.permute_heads) for r in plan] == [("blk.0.attn_k.weight", 1), ("output.weight", None)]
    with pytest.raises(UsageError, match="no place in a qwen2 GGUF"):
        plan_tensors(["vision_tower.patch.weight"], lambda n: (4, 8), "qwen2", hp)


def test_permute_interleaves_rotary_halves():
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)  # 2 heads of 4 rows: [0 1 | 2 3] -> [0 2 1 3]
    assert permute(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_pre_tokenizer_names_from_split_regexes():
    for regexes, name in KNOWN_SPLITS.items():
        splits = [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated"} for r in regexes]
        seq = {"type": "Sequence", "pretokenizers": [*splits, {"type": "ByteLevel"}]}
        assert KNOWN_SPLITS[_split_regexes(seq)] == name
    assert _split_regexes({"type": "ByteLevel"}) == ()


@pytest.mark.parametrize(
    "change, text",
    [
        ({"num_hidden_layers": 1e9}, "num_hidden_layers is 1000000000.0, not an integer"),
        ({"num_hidden_layers": 10**9}, "num_hidden_layers is 1000000000, outside 0..512"),
        ({"hidden_size": "256"}, "hidden_size is '256', not an integer"),
        ({"vocab_size": True}, "vocab_size is True, not an integer"),
        ({"rope_theta": float("nan")}, "rope_theta is nan, not a finite number"),
        ({"rope_scaling": [1, 2]}, "rope_scaling is [1, 2], not a table"),
    ],
)
def test_config_values_of_the_wrong_type_or_absurd_size_are_one_line(runner, tmp_path, change, text):
    """`localr1 convert` on a checkpoint whose config.json lies: refused before anything is built."""
    from localr1.cli.app import app

    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    write_safetensors(folder / "model.safetensors", {"w": ("F32", np.zeros((2, 2), np.float32))})
    result = runner.invoke(app, ["convert", str(folder), "-o", str(tmp_path / "out.gguf")])
    assert result.exit_code == 1 and "internal error" not in result.stderr
    assert result.stderr.startswith("Error: ") and text in result.stderr.splitlines()[0], result.stderr


@pytest.mark.parametrize("tokenizer", ['{"model": [1, 2], "decoder": {}}', '{"model": {}, "decoder": 7}', "[1]"])
def test_a_tokenizer_json_of_the_wrong_shape_is_one_line(tmp_path, tokenizer):
    from localr1.errors import LocalR1Error
    from localr1.models.convert.vocab import tokenizer_json

    (tmp_path / "tokenizer.json").write_text(tokenizer)
    with pytest.raises(LocalR1Error):
        tokenizer_json(tmp_path)
