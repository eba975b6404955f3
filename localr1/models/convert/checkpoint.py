"""A Hugging Face checkpoint on disk: its config and its weights, read without running any of its code.

Weights are read from safetensors files with a bounded parser (every offset checked against the file's
size before a byte is mapped) and handed out one tensor at a time as NumPy arrays, so converting a 70B
model never holds more than one tensor in memory. Pickle checkpoints (``pytorch_model.bin``) are refused
unless the caller allows them: unpickling runs code. Nothing from the checkout is ever imported
(``auto_map``/``trust_remote_code`` entries are ignored).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localr1.errors import InvalidModelFileError, UsageError

# Imported inside the functions that use them: torch (heavy to import, and not needed by every command).

# safetensors dtype -> (numpy dtype of the raw items, bytes per item)
_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
_MAX_HEADER = 100 << 20  # the format's own limit
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a safetensors file: where its bytes are and what they hold."""

    name: str
    dtype: str  # F32, F16 or BF16
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    def load(self) -> np.ndarray:
        """The tensor as F32 or F16, the way llama.cpp's converter sees it (BF16 widened to F32, exactly)."""
        raw_type, _ = _DTYPES[self.dtype]
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.nbytes,))
        array = data.view(raw_type).reshape(self.shape)
        if self.dtype == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return np.array(array)  # off the map: the file may go away while the array lives


@dataclass
class Checkpoint:
    folder: Path
    config: dict
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    pickle_files: list[Path] = field(default_factory=list)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict)  # pickle weights, loaded with --allow-pickle

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else ""

    def names(self) -> list[str]:
        """Tensor names in the order llama.cpp's converter visits them (shards in order, names sorted)."""
        return list(self._arrays) if self._arrays else list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._arrays[name].shape) if self._arrays else self.tensors[name].shape

    def load(self, name: str) -> np.ndarray:
        return self._arrays[name] if self._arrays else self.tensors[name].load()


_MAX_JSON = 256 << 20  # tokenizer.json files reach ~30 MB (Llama 3, Qwen); 256 MB is not one


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """The tensors of one safetensors file, sorted by name (the order the safetensors library uses)."""
    size = path.stat().st_size
    where = f"{path.name} is not a valid safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidModelFileError(f"{where}: it is {size} bytes long", hint="Download it again.")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise InvalidModelFileError(
                f"{where}: its header claims {n} bytes but the file has {size}", hint="Download it again."
            )
        try:
            meta = json.loads(f.read(n).decode("utf-8"))
        except RecursionError:
            raise InvalidModelFileError(
                f"{where}: its header is nested too deeply", hint="Download it again."
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidModelFileError(f"{where}: its header is not JSON ({e})", hint="Download it again.") from e
    if not isinstance(meta, dict):
        raise InvalidModelFileError(f"{where}: its header is not a JSON object", hint="Download it again.")
    data_start, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorRef] = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidModelFileError(f"{where}: tensor {name!r} has a malformed entry") from e
        numbers = [*shape, begin, end]
        if not isinstance(dtype, str) or not all(isinstance(x, int) and not isinstance(x, bool) for x in numbers):
            raise InvalidModelFileError(f"{where}: tensor {name!r} has a malformed entry")
        if len(shape) > 8:
            raise InvalidModelFileError(f"{where}: tensor {name!r} has {len(shape)} dimensions")
        if dtype not in _DTYPES:
            raise UsageError(
                f"tensor {name!r} in {path.name} is {dtype}; localr1 converts F32, F16 and BF16 weights",
                hint="Quantized checkpoints (FP8, GPTQ, AWQ, bitsandbytes) must be dequantized first.",
            )
        count = 1
        for d in shape:
            if d < 0:
                raise InvalidModelFileError(f"{where}: tensor {name!r} has a negative dimension")
            count *= d
        if not (0 <= begin <= end <= data_size) or end - begin != count * _DTYPES[dtype][1]:
            raise InvalidModelFileError(
                f"{path.name} is truncated or corrupt: tensor {name!r} lies at bytes {begin}-{end} "
                f"of a {data_size}-byte data section",
                hint="Download the checkpoint again.",
            )
        out[name] = TensorRef(name, dtype, shape, path, data_start + begin, end - begin)
    return dict(sorted(out.items()))


def _part_names(folder: Path, prefix: str, suffix: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix))


def read_json(path: Path, *, missing: str, hint: str) -> dict:
    """One JSON object file of a checkpoint: a UsageError when absent, InvalidModelFileError when broken."""
    if not path.is_file():
        raise UsageError(missing, hint=hint)
    try:
        if path.stat().st_size > _MAX_JSON:
            raise InvalidModelFileError(f"{path} is larger than {_MAX_JSON >> 20} MiB", hint="Is it the right file?")
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise InvalidModelFileError(f"{path} is nested too deeply to be a checkpoint's JSON") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelFileError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidModelFileError(f"{path} is not a JSON object")
    return data


# config.json values the converter computes with: integers in a sane range (num_hidden_layers 1e9 made it
# build a billion tensor names, 3 GB and counting), finite numbers, tables where tables belong.
_CONFIG_INTS: dict[int, tuple[str, ...]] = {
    512: ("num_hidden_layers", "n_layers", "n_layer", "num_layers", "first_k_dense_replace"),
    1 << 20: ("hidden_size", "n_embd", "dim"),
    1 << 22: (
        "intermediate_size",
        "n_inner",
        "hidden_dim",
        "dense_intermediate_size",
        "prefix_dense_intermediate_size",
        "moe_intermediate_size",
    ),  # fmt: skip
    1 << 14: (
        "num_attention_heads",
        "n_head",
        "n_heads",
        "num_key_value_heads",
        "n_kv_heads",
        "n_routed_experts",
        "num_experts",
        "num_local_experts",
        "num_experts_per_tok",
        "n_shared_experts",
        "n_group",
        "topk_group",
    ),  # fmt: skip
    1 << 16: ("head_dim", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"),
    1 << 24: ("vocab_size",),
    (1 << 31) - 1: (
        "max_position_embeddings",
        "n_ctx",
        "n_positions",
        "max_length",
        "max_sequence_length",
        "original_max_position_embeddings",
    ),  # fmt: skip
}
_CONFIG_FLOATS = ("rope_theta", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps",
                  "partial_rotary_factor", "routed_scaling_factor", "rotary_emb_base")  # fmt: skip
_CONFIG_TABLES = ("rope_scaling", "rope_parameters", "quantization_config")


def check_config(config: dict, path: Path) -> None:
    """Refuse a config.json value of the wrong type or an absurd size, naming the key."""

    def bad(key: str, wanted: str) -> InvalidModelFileError:
        return InvalidModelFileError(
            f"{path} is not usable: {key} is {config[key]!r:.40}, {wanted}",
            hint="Fix config.json, or download the checkpoint again.",
        )

    for high, keys in _CONFIG_INTS.items():
        for key in keys:
            if key not in config or config[key] is None:
                continue
            v = config[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(key, "not an integer")
            if not 0 <= v <= high:
                raise bad(key, f"outside 0..{high:,}")
    for key in _CONFIG_FLOATS:
        v = config.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise bad(key, "not a finite number")
    for key in _CONFIG_TABLES:
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise bad(key, "not a table")
    if isinstance(config.get("architectures"), list) and not all(isinstance(a, str) for a in config["architectures"]):
        raise bad("architectures", "not a list of names")


def open_checkpoint(folder: Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Read config.json and index the weights of a checkpoint folder (no weight is loaded)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="Pass the folder that holds config.json.")
    config = read_json(
        folder / "config.json",
        missing=f"{folder} has no config.json, so it is not a Hugging Face checkpoint",
        hint="Pass the folder that holds config.json, *.safetensors and tokenizer.json.",
    )
    if "text_config" in config and isinstance(config["text_config"], dict):
        config = {**config, **config["text_config"]}
    check_config(config, folder / "config.json")
    ckpt = Checkpoint(folder, config)

    index = folder / "model.safetensors.index.json"
    parts = _part_names(folder, "model", ".safetensors")
    from_index: set[str] = set()
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            from_index = set(weight_map)
            parts = sorted(set(weight_map.values()))
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidModelFileError(f"{index.name} has no valid weight_map") from e
        for part in parts:
            if os.sep in part or "/" in part or part.startswith(".."):
                raise InvalidModelFileError(f"{index.name} names a file outside the folder: {part!r}")
            if not (folder / part).is_file():
                raise UsageError(
                    f"{part} is missing from {folder} (model.safetensors.index.json lists it)",
                    hint="Download every shard of the checkpoint.",
                )
    if not parts:
        pickles = [p for p in sorted(folder.iterdir()) if p.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise UsageError(f"{folder} holds no weights (*.safetensors)", hint="Download the model's weights too.")
        if not allow_pickle:
            raise UsageError(
                f"{folder} holds only pickle weights ({pickles[0].name}); loading a pickle can run code",
                hint="Use the safetensors version of the model, or pass --allow-pickle if you trust the source.",
            )
        ckpt.pickle_files = pickles
        ckpt._arrays = _load_pickles(pickles)
        return ckpt
    for part in parts:
        for name, ref in read_safetensors_header(folder / part).items():
            if name in ckpt.tensors:
                raise InvalidModelFileError(f"tensor {name!r} appears in two shards ({part})")
            ckpt.tensors[name] = ref
    if from_index and from_index != set(ckpt.tensors):
        missing = sorted(from_index - set(ckpt.tensors))[:3]
        raise InvalidModelFileError(
            f"the shards do not hold the tensors the index lists (missing: {', '.join(missing) or 'none'})",
            hint="Download the checkpoint again.",
        )
    return ckpt


def _load_pickles(paths: list[Path]) -> dict[str, np.ndarray]:
    """Only with --allow-pickle: torch's restricted unpickler (weights_only), as llama.cpp's converter does."""
    try:
        import torch
    except ImportError as e:
        raise UsageError(
            "reading pickle checkpoints needs PyTorch", hint="pip install torch, or use the safetensors weights."
        ) from e
    out: dict[str, np.ndarray] = {}
    for path in paths:
        try:
            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise InvalidModelFileError(f"{path.name} could not be read as a PyTorch checkpoint: {e}") from e
        for name, t in state.items():
            if t.dtype not in (torch.float16, torch.float32):
                t = t.to(torch.float32)
            out[name] = t.numpy()
    return out
