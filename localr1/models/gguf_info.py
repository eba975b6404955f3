"""Bounded, validated reading of GGUF headers.

GGUF files come from the internet, so nothing in a header is trusted: every count, length and offset is
checked against the size of the file before it is used, and the tensor data the header describes must lie
inside the file. Only then does native code (llama.cpp) get to see the file.

The reader is pure Python over ``mmap``: opening the header of a 400 GB model reads only the header pages.
Large string arrays (the vocabulary) are skipped unless asked for, so a header is read in milliseconds.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localr1.errors import InvalidModelFileError
from localr1.fit.quant_types import FILE_TYPE_NAMES
from localr1.models import header_cache

# Imported inside the functions that use them: gguf (heavy to import, and not needed by every command).

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# Far above any real model (the full DeepSeek-R1 has ~1,100 tensors and ~60 metadata keys) but small
# enough that a hostile count is refused before anything is allocated for it.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_STRING = 64 << 20
MAX_KEY = 1 << 16

# GGUF metadata value types
(
    _UINT8,
    _INT8,
    _UINT16,
    _INT16,
    _UINT32,
    _INT32,
    _FLOAT32,
    _BOOL,
    _STRING,
    _ARRAY,
    _UINT64,
    _INT64,
    _FLOAT64,
) = range(13)
_SCALAR_FORMATS: dict[int, str] = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}
_SCALAR_SIZES = {t: struct.calcsize(f) for t, f in _SCALAR_FORMATS.items()}

MAX_SPLIT_PARTS = 999  # DeepSeek-R1 671B at Q8_0 is 15 parts of 50 GB; more is not a model
_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class ArraySummary:
    """An array value that was not loaded into memory (its element type and length only)."""

    element_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the start of the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int
    split_paths: list[Path] = field(default_factory=list)

    # --- convenient views of the metadata -------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str:
        name = self.metadata.get("general.name")
        return str(name) if name else self.path.stem

    @property
    def chat_template(self) -> str | None:
        tmpl = self.metadata.get("tokenizer.chat_template")
        return tmpl if isinstance(tmpl, str) and tmpl.strip() else None

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def block_count(self) -> int | None:
        value = self.arch_value("block_count")
        return int(value) if isinstance(value, int) else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def quant_name(self) -> str:
        """The dominant weight type, as llama.cpp names file types (``Q4_K_M`` style where known)."""
        ftype = self.metadata.get("general.file_type")
        if isinstance(ftype, int) and ftype in FILE_TYPE_NAMES:
            return FILE_TYPE_NAMES[ftype]
        weights = [t for t in self.tensors if len(t.shape) >= 2]
        if not weights:
            return "unknown"
        by_type: dict[int, int] = {}
        for t in weights:
            by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.nbytes
        return ggml_type_name(max(by_type, key=by_type.__getitem__))


# ggml's tensor types: id -> (name, elements per block, bytes per block). A copy of the gguf package's
# table (tests/unit/models/test_gguf_info.py holds the two equal), so that reading a header does not import gguf,
# which pulls in NumPy and costs 50-100 ms of every command's start; types added after this copy are
# looked up in the gguf package.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}


def _lookup_gguf(ggml_type: int) -> tuple[str, int, int] | None:
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        t = GGMLQuantizationType(ggml_type)
        return t.name, *GGML_QUANT_SIZES[t]
    except (ValueError, KeyError):
        return None


def _type(ggml_type: int) -> tuple[str, int, int] | None:
    known = GGML_TYPES.get(ggml_type)
    if known is None and (known := _lookup_gguf(ggml_type)) is not None:
        GGML_TYPES[ggml_type] = known
    return known


def ggml_type_name(ggml_type: int) -> str:
    known = _type(ggml_type)
    return known[0] if known else f"type{ggml_type}"


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    known = _type(ggml_type)
    if known is None:
        raise ValueError(f"unknown tensor type {ggml_type}")
    _, block, type_size = known
    if not shape or shape[0] % block:
        raise ValueError(f"row of {shape[0] if shape else 0} elements is not a multiple of block size {block}")
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


class _Reader:
    """Cursor over a buffer; every read is bounds-checked against the end of the file."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> InvalidModelFileError:
        return InvalidModelFileError(
            f"{self.path.name} has a corrupt GGUF header: {what} (at byte {self.pos:,})",
            hint="The file is damaged or was cut short; download or convert it again.",
        )

    def truncated(self, what: str, needed: int) -> InvalidModelFileError:
        return InvalidModelFileError(
            f"{self.path.name} is truncated: the header ends before its {what} "
            f"(needs byte {needed:,}, the file has {self.size:,})",
            hint="The download was probably interrupted; download the file again.",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.truncated(what, self.pos + max(n, 0))

    def scalar(self, vtype: int, what: str) -> Any:
        size = _SCALAR_SIZES[vtype]
        self.need(size, what)
        (value,) = struct.unpack_from(_SCALAR_FORMATS[vtype], self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar(_UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(_UINT64, what)

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        length = self.u64(f"{what} length")
        if length > limit:
            raise self.fail(f"{what} claims {length:,} bytes")
        self.need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")


_U64 = struct.Struct("<Q")


def _skip_strings(r: _Reader, count: int, key: str) -> None:
    """Skip ``count`` strings (the vocabulary, the merges): a tight loop, since R1's header has 300k of them."""
    unpack, buf, size, pos = _U64.unpack_from, r.buf, r.size, r.pos
    remaining = count
    while remaining and pos + 8 <= size:
        (length,) = unpack(buf, pos)
        if length > MAX_STRING:
            r.pos = pos
            raise r.fail(f"an element of {key} claims {length:,} bytes")
        pos += 8 + length
        remaining -= 1
    if remaining or pos > size:
        r.pos = min(pos, size)
        raise r.truncated(f"array {key}", size + 1)
    r.pos = pos


def _read_value(r: _Reader, vtype: int, key: str, keep_arrays: bool) -> Any:
    if vtype in _SCALAR_FORMATS:
        return r.scalar(vtype, f"value of {key}")
    if vtype == _STRING:
        return r.string(f"value of {key}")
    if vtype != _ARRAY:
        raise r.fail(f"{key} has unknown value type {vtype}")
    etype = r.u32(f"array type of {key}")
    count = r.u64(f"array length of {key}")
    if etype == _ARRAY:
        raise r.fail(f"{key} is an array of arrays, which GGUF models do not use")
    if etype in _SCALAR_SIZES:
        total = count * _SCALAR_SIZES[etype]
        r.need(total, f"array {key}")
        if not keep_arrays or count > MAX_STRING:
            r.pos += total
            return ArraySummary(etype, count)
        fmt = "<" + _SCALAR_FORMATS[etype][1] * count
        values = list(struct.unpack_from(fmt, r.buf, r.pos))
        r.pos += total
        return values
    if etype == _STRING:
        # Each string takes at least its 8-byte length: refuse counts the file cannot hold.
        r.need(count * 8, f"array {key}")
        if not keep_arrays:
            _skip_strings(r, count, key)
            return ArraySummary(etype, count)
        return [r.string(f"element of {key}") for _ in range(count)]
    raise r.fail(f"array {key} has unknown element type {etype}")


def read_gguf(
    path: str | os.PathLike[str],
    *,
    keep_arrays: Iterable[str] = ("tokenizer.ggml.eos_token_ids",),
    check_data: bool = True,
) -> GGUFInfo:
    """Read and validate the header of a GGUF file.

    ``keep_arrays`` names the array-valued keys to load (others are summarised); pass
    ``("tokenizer.ggml.tokens",)`` to get the vocabulary. With ``check_data`` every tensor must lie inside
    the file, which is what catches a download that was cut short.
    """
    path = Path(path)
    keep = set(keep_arrays)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the read, or never end
            raise InvalidModelFileError(f"{path} is not a regular file", hint="Pass the .gguf file itself.")
        size = st.st_size
        fh = path.open("rb")
    except FileNotFoundError:
        raise InvalidModelFileError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InvalidModelFileError(f"{path} is a directory, not a GGUF file") from None
    except PermissionError:
        raise InvalidModelFileError(f"cannot read {path}: permission denied") from None
    with fh:
        if size < 4 or fh.read(4) != GGUF_MAGIC:
            raise InvalidModelFileError(
                f"{path.name} is not a GGUF file",
                hint="localr1 runs GGUF models (.gguf): download a GGUF build of the model.",
            )
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            info = _parse(mm, size, path, keep)
    if check_data:
        _check_tensor_data(info)
    return info


def _parse(buf: Any, size: int, path: Path, keep: set[str]) -> GGUFInfo:
    r = _Reader(buf, size, path)
    r.pos = 4
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFileError(
            f"{path.name} is GGUF version {version}, which is not supported (only 2 and 3)",
            hint="Convert the model again with a current converter.",
        )
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    if n_tensors > MAX_TENSORS:
        raise r.fail(f"it claims {n_tensors:,} tensors")
    if n_kv > MAX_KV:
        raise r.fail(f"it claims {n_kv:,} metadata entries")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}", limit=MAX_KEY)
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        vtype = r.u32(f"type of {key}")
        metadata[key] = _read_value(r, vtype, key, key in keep or key.endswith(_PER_LAYER))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment!r} is not a power of two")

    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = r.string(f"name of tensor #{i}", limit=MAX_KEY)
        if name in seen:
            raise r.fail(f"tensor {name!r} appears twice")
        seen.add(name)
        n_dims = r.u32(f"dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(r.u64(f"shape of {name}") for _ in range(n_dims))
        ggml_type = r.u32(f"type of {name}")
        offset = r.u64(f"offset of {name}")
        known = _type(ggml_type)
        if known is None:
            raise r.fail(f"tensor {name} has unknown type {ggml_type}")
        n_elements = 1
        for d in shape:
            n_elements *= d
        if n_elements >= 1 << 62:
            raise r.fail(f"tensor {name} claims {n_elements:,} elements")
        block = known[1]
        if shape[0] % block:
            raise r.fail(f"tensor {name} has rows of {shape[0]} elements, not a multiple of {block}")
        if offset % alignment:
            raise r.fail(f"tensor {name} starts at an unaligned offset")
        tensors.append(TensorInfo(name, shape, ggml_type, offset, tensor_nbytes(ggml_type, shape)))

    data_offset = (r.pos + alignment - 1) // alignment * alignment
    return GGUFInfo(path, version, metadata, tensors, data_offset, size)


def _check_tensor_data(info: GGUFInfo) -> None:
    data_size = info.file_size - info.data_offset
    end = 0
    for t in info.tensors:
        end = max(end, t.offset + t.nbytes)
    if info.tensors and end > data_size:  # (a header-only file need not be padded to the alignment)
        raise InvalidModelFileError(
            f"{info.path.name} is truncated: its tensors need {info.data_offset + end:,} bytes "
            f"but the file has {info.file_size:,}",
            hint="The download was probably interrupted; download the file again.",
        )
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in info.tensors)
    for (_, a_end, a_name), (b_start, _, b_name) in zip(spans, spans[1:]):
        if b_start < a_end:
            raise InvalidModelFileError(
                f"{info.path.name} has a corrupt GGUF header: tensors {a_name} and {b_name} overlap",
                hint="The file is damaged; download or convert it again.",
            )


def split_siblings(path: Path) -> list[Path]:
    """All files of a split model (``name-00001-of-00004.gguf``), in order; ``[path]`` if not split."""
    m = _SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count, number = int(m.group("count")), int(m.group("no"))
    if not 1 <= number <= count <= MAX_SPLIT_PARTS:  # x-00001-of-00000.gguf: not a split model's name
        return [path]
    prefix = m.group("prefix")
    return [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def inspect_model(path: str | os.PathLike[str], *, keep_arrays: Iterable[str] = ()) -> GGUFInfo:
    """Validate a model file (and all shards of a split model) and return the first shard's header.

    Results are cached by path, size, modification time and inode, in memory (planning and loading read
    a header once) and on disk (``header_cache``: the next run does not read it again).
    """

    path = Path(path)
    keep = tuple(keep_arrays)
    disk_key = header_cache.fingerprint(split_siblings(path), keep)
    key = json.dumps(disk_key) if disk_key is not None else None
    if key is not None and key in _INSPECTED:
        return _INSPECTED[key]
    stored = header_cache.load(disk_key) if disk_key is not None else None
    info = _from_json(stored) if stored is not None else None
    if info is None:
        info = _inspect(path, keep)
        check_hparams(info)
        if disk_key is not None:
            header_cache.store(disk_key, _to_json(info))
    else:
        check_hparams(info)  # the cache is a file too: what it says is checked like the header itself
    if key is not None:
        if len(_INSPECTED) >= 32:
            _INSPECTED.pop(next(iter(_INSPECTED)))
        _INSPECTED[key] = info
    return info


_INSPECTED: dict[tuple, GGUFInfo] = {}


def _to_json(info: GGUFInfo) -> dict:
    def encode(value: Any) -> Any:
        return {"array": [value.element_type, value.length]} if isinstance(value, ArraySummary) else value

    return {
        "path": str(info.path),
        "version": info.version,
        "metadata": {k: encode(v) for k, v in info.metadata.items()},
        "tensors": [[t.name, list(t.shape), t.ggml_type, t.offset, t.nbytes] for t in info.tensors],
        "data_offset": info.data_offset,
        "file_size": info.file_size,
        "split_paths": [str(p) for p in info.split_paths],
    }


def _from_json(raw: dict) -> GGUFInfo | None:
    """A header from the cache, or None if the entry is not what ``_to_json`` writes (then it is read again)."""

    def decode(value: Any) -> Any:
        return ArraySummary(*value["array"]) if isinstance(value, dict) else value

    try:
        return GGUFInfo(
            path=Path(raw["path"]),
            version=raw["version"],
            metadata={k: decode(v) for k, v in raw["metadata"].items()},
            tensors=[TensorInfo(n, tuple(s), t, o, b) for n, s, t, o, b in raw["tensors"]],
            data_offset=raw["data_offset"],
            file_size=raw["file_size"],
            split_paths=[Path(p) for p in raw["split_paths"]],
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


# --- the hyperparameters llama.cpp reads, checked for type and range before it sees them ----------------
# (suffix after "<arch>.", low, high): integers llama.cpp reads into fixed-size fields; a value out of range
# (block_count 600 > LLAMA_MAX_LAYERS, 0 layers) aborts it, and a float or an array where it expects an
# integer is read as garbage. Keys that may be per-layer arrays (one value per block) are in _PER_LAYER.
_INT_KEYS: tuple[tuple[str, int, int], ...] = (
    ("context_length", 1, (1 << 31) - 1),
    ("embedding_length", 1, 1 << 20),
    ("block_count", 1, 512),  # LLAMA_MAX_LAYERS
    ("feed_forward_length", 0, 1 << 22),
    ("expert_feed_forward_length", 0, 1 << 22),
    ("attention.head_count", 0, 1 << 14),
    ("attention.head_count_kv", 0, 1 << 14),
    ("attention.key_length", 0, 1 << 16),
    ("attention.value_length", 0, 1 << 16),
    ("rope.dimension_count", 0, 1 << 16),
    ("expert_count", 0, 1 << 14),
    ("expert_used_count", 0, 1 << 14),
    ("vocab_size", 1, 1 << 24),
)
_PER_LAYER = (".feed_forward_length", ".attention.head_count", ".attention.head_count_kv")
# (suffix, must be positive): finite floats
_FLOAT_KEYS = (
    ("rope.freq_base", True),
    ("rope.scaling.factor", True),
    ("attention.layer_norm_rms_epsilon", False),
    ("attention.layer_norm_epsilon", False),
    ("expert_weights_scale", False),
)


def check_hparams(info: GGUFInfo) -> None:
    """Refuse a header whose hyperparameters llama.cpp would crash on (or misread): one line naming the key."""
    name = info.path.name

    def bad(key: str, value: Any, wanted: str) -> InvalidModelFileError:
        shown = f"an array of {value.length:,}" if isinstance(value, ArraySummary) else repr(value)[:40]
        return InvalidModelFileError(
            f"{name} is corrupt: metadata {key} is {shown}, {wanted}",
            hint="Download the model again, or use another GGUF build of it.",
        )

    arch = info.metadata.get("general.architecture")
    if arch is None:
        return  # not a model (an adapter or vocabulary file): llama.cpp says what it lacks
    if not isinstance(arch, str) or not re.fullmatch(r"[a-z0-9_\-.]{1,64}", arch):
        raise bad("general.architecture", arch, "not an architecture name")
    layers = info.metadata.get(f"{arch}.block_count")
    for suffix, low, high in _INT_KEYS:
        key = f"{arch}.{suffix}"
        if key not in info.metadata:
            continue
        value = info.metadata[key]
        values = value if isinstance(value, list) and key.endswith(_PER_LAYER) else [value]
        if isinstance(value, list) and key.endswith(_PER_LAYER) and len(value) != layers:
            raise bad(key, value, f"not one value per layer ({layers})")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(key, value, "not an integer")
            if not low <= v <= high:
                raise bad(key, value, f"outside {low:,}..{high:,}")
    used, experts = info.metadata.get(f"{arch}.expert_used_count"), info.metadata.get(f"{arch}.expert_count")
    if isinstance(used, int) and isinstance(experts, int) and used > experts:
        raise bad(f"{arch}.expert_used_count", used, f"more than the {experts} experts")
    for suffix, positive in _FLOAT_KEYS:
        key = f"{arch}.{suffix}"
        if key not in info.metadata:
            continue
        v = info.metadata[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            raise bad(key, v, "not a finite positive number" if positive else "not a finite number")
    if isinstance(layers, int):
        for t in info.tensors:
            if t.name.startswith("blk.") and (n := t.name.split(".")[1]).isdigit() and int(n) >= layers:
                raise InvalidModelFileError(
                    f"{name} is corrupt: tensor {t.name} belongs to a layer past block_count ({layers})",
                    hint="Download the model again, or use another GGUF build of it.",
                )
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, (list, ArraySummary)):
        raise bad("tokenizer.ggml.tokens", tokens, "not a list of tokens")


def _inspect(path: Path, keep_arrays: Iterable[str]) -> GGUFInfo:
    m = _SPLIT_RE.match(path.name)
    if m and split_siblings(path) == [path]:
        raise InvalidModelFileError(
            f"{path.name} is named as part {int(m['no'])} of {int(m['count'])}, which cannot be",
            hint=f"Split parts are named NAME-00001-of-0000N.gguf, numbered 1 to N (N at most {MAX_SPLIT_PARTS}).",
        )
    shards = split_siblings(path)
    missing = [p for p in shards if not p.exists()]
    if missing:
        raise InvalidModelFileError(
            f"{path.name} is one part of a split model, but {missing[0].name} is missing",
            hint="Download all parts of the model into the same folder.",
        )
    first = read_gguf(shards[0], keep_arrays=("tokenizer.ggml.eos_token_ids", *keep_arrays))
    for shard in shards[1:]:
        part = read_gguf(shard)
        first.tensors.extend(part.tensors)
    first.split_paths = shards
    return first
