"""GGUF files with a real header and tensor table whose data is a hole of zeros (a sparse file): llama.cpp
opens them as it opens any model, and reading their weights reads zeros. The CPU step probe
(engine/step_probe.py) decodes one; the tests open full-size layouts of every catalog shape with llama.cpp's
``no_alloc`` accounting. A 671B layout takes a few hundred KB of disk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from localr1.fit.arch import Architecture
from localr1.fit.quant_rules import TYPE_IDS, tensor_bytes
from localr1.models.gguf_info import read_gguf

# Imports inside functions: gguf and numpy, heavy, only when a layout is written.


def add_metadata(writer, metadata: Mapping[str, int | float | str | bool]) -> None:
    """Architecture keys into a GGUFWriter, each with the GGUF type its Python value implies."""
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, value)


def write_layout(arch: Architecture, path: Path, types: Mapping[str, str], *, name: str) -> Path:
    """``arch``'s tensors, each of the type ``types`` names for it ("Q4_K", "F32", ...), without a
    tokenizer (llama.cpp's "none"), the data left sparse."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch.arch)
    writer.add_name(name)
    add_metadata(writer, arch.gguf_metadata())
    writer.add_tokenizer_model("none")
    for spec in arch.tensors():
        kind = types[spec.name]
        writer.add_tensor_info(spec.name, tuple(reversed(spec.shape)), np.dtype(np.float32),
                               tensor_bytes(kind, spec.shape), raw_dtype=gguf.GGMLQuantizationType(TYPE_IDS[kind]))  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    info = read_gguf(path, check_data=False)  # where the data would start and end: a hole up to there
    with open(path, "r+b") as fh:
        fh.truncate(info.data_offset + max(t.offset + t.nbytes for t in info.tensors))
    return path
