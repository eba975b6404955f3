"""Small valid GGUF files for tests."""

from __future__ import annotations

from pathlib import Path

from localr1.models.gguf_layout import add_metadata  # noqa: F401 - the tests' writers use it from here


def write_gguf(path: Path, *, arch: str = "llama", template: str | None = None, n_tensors: int = 2) -> Path:
    """A small valid GGUF file (a header and a few f32 tensors)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("test model")
    writer.add_context_length(2048)
    writer.add_block_count(1)
    if template:
        writer.add_chat_template(template)
    for i in range(n_tensors):
        writer.add_tensor(f"blk.0.t{i}.weight", np.arange(64 * (i + 1), dtype=np.float32).reshape(i + 1, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
