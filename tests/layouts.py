"""Full-size GGUF layouts without weights: a real header and tensor table, the data left sparse.

llama.cpp opens them with ``no_alloc`` and reports what it would allocate, which is what the planner's
estimates are checked against. A 671B layout takes a few hundred KB of disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from ggufs import add_metadata

from localr1.fit.arch import Architecture

F32, F16, Q8_0, Q4_K = 0, 1, 8, 12


def weight_type(shape: tuple[int, ...], quant: int) -> int:
    if len(shape) == 1:
        return F32
    if quant == Q4_K and shape[0] % 256 == 0:
        return Q4_K
    return Q8_0 if shape[0] % 32 == 0 else F16


def write_layout(arch: Architecture, path: Path, *, quant: int = Q4_K, name: str = "layout") -> Path:
    import gguf
    import numpy as np

    from localr1.models.gguf_info import tensor_nbytes

    writer = gguf.GGUFWriter(str(path), arch.arch)
    writer.add_name(name)
    add_metadata(writer, arch.gguf_metadata())
    writer.add_tokenizer_model("none")
    total = 0
    for spec in arch.tensors():
        ggml_type = weight_type(spec.shape, quant)
        nbytes = tensor_nbytes(ggml_type, spec.shape)
        writer.add_tensor_info(
            spec.name,
            tuple(reversed(spec.shape)),
            np.dtype(np.float32),
            nbytes,
            raw_dtype=gguf.GGMLQuantizationType(ggml_type),
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    from localr1.models.gguf_info import read_gguf

    info = read_gguf(path, check_data=False)
    total = max(t.offset + t.nbytes for t in info.tensors)
    with open(path, "r+b") as fh:
        fh.truncate(info.data_offset + total)
    return path


def sparse_size(path: Path) -> int:
    return os.stat(path).st_blocks * 512
