"""Full-size GGUF layouts without weights: a real header and tensor table, the data left sparse.

llama.cpp opens them with ``no_alloc`` and reports what it would allocate, which is what the planner's
estimates are checked against. A 671B layout takes a few hundred KB of disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from localr1.fit.arch import Architecture
from localr1.models import gguf_layout
from localr1.models.gguf_info import GGML_TYPES

F32, F16, Q8_0, Q4_K = 0, 1, 8, 12


def weight_type(shape: tuple[int, ...], quant: int) -> int:
    if len(shape) == 1:
        return F32
    if quant == Q4_K and shape[0] % 256 == 0:
        return Q4_K
    return Q8_0 if shape[0] % 32 == 0 else F16


def write_layout(arch: Architecture, path: Path, *, quant: int = Q4_K, name: str = "layout") -> Path:
    types = {spec.name: GGML_TYPES[weight_type(spec.shape, quant)][0] for spec in arch.tensors()}
    return gguf_layout.write_layout(arch, path, types, name=name)


def sparse_size(path: Path) -> int:
    return os.stat(path).st_blocks * 512
