"""llama.cpp's own quantizer on generated F16 models: the type it gives each tensor, to check the planner's
copy of its rules (localr1/fit/quant_rules.py) against.

A model is written the way ``convert_hf_to_gguf.py --outtype f16`` writes one (1-D tensors and the expert
router in F32, every other weight in F16), either with random weights (small shapes, quantized for real) or
with its data left sparse (real sizes: llama.cpp's dry run reads the tensor table and no data). The quantizer
runs in a child process, as `localr1 quantize` runs it: llama.cpp aborts the process on some errors.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ggufs import add_metadata

from localr1.fit.arch import Architecture
from localr1.fit.quant_rules import source_type
from localr1.fit.quant_types import BY_NAME

FILE_TYPES = {q.name: q.ftype for q in BY_NAME.values() if q.ftype is not None}

_CHILD = r"""
import ctypes, json, sys
from localr1.engine.backend import init_backend, set_fields
lib = init_backend()
lines = []
@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def on_log(level, text, _data):
    lines.append(text.decode("utf-8", "replace") if text else "")
lib.llama_log_set(on_log, None)
source, folder, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
out = {}
for item in sys.argv[4:]:
    quant, ftype = item.split("=")
    lines.clear()
    params = set_fields(lib.llama_model_quantize_default_params(), ftype=int(ftype), nthread=2, dry_run=dry)
    rc = lib.llama_model_quantize(source.encode(), f"{folder}/{quant}.gguf".encode(), ctypes.byref(params))
    out[quant] = {"rc": rc, "log": "".join(lines)}
print(json.dumps(out))
"""

# one tensor of a dry run's log: "[  3/ 339]  blk.0.attn_k.weight  - [ 1536,   256,  1,  1], type =  f16, size = ..."
# followed by "-> x MiB (q4_K)" when it changes type
_DRY_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((\w+)\))?"
)


def write_f16_model(arch: Architecture, path: Path, *, sparse: bool, seed: int = 3) -> Path:
    """The model as an F16 conversion: random weights, or (``sparse``) a full-size file whose data is a hole."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch.arch)
    writer.add_name(f"{arch.arch} {arch.n_layer} layers (quantizer check)")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_metadata(writer, arch.gguf_metadata())
    writer.add_tokenizer_model("none")
    specs = arch.tensors()
    dtypes = {s.name: np.dtype(np.float32 if source_type(s) == "F32" else np.float16) for s in specs}
    for s in specs:
        shape = tuple(reversed(s.shape))
        writer.add_tensor_info(s.name, shape, dtypes[s.name], int(np.prod(shape)) * dtypes[s.name].itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    if sparse:
        writer.close()
        from localr1.models.gguf_info import read_gguf

        info = read_gguf(path, check_data=False)
        with open(path, "r+b") as fh:
            fh.truncate(info.data_offset + max(t.offset + t.nbytes for t in info.tensors))
        return path
    rng = np.random.default_rng(seed)
    for s in specs:
        shape = tuple(reversed(s.shape))
        writer.write_tensor_data((rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(dtypes[s.name]))
    writer.close()
    return path


def llama_quantize(
    source: Path, folder: Path, quants: list[str], *, dry_run: bool, keep: bool = False
) -> dict[str, dict[str, str]]:
    """Each quant's tensor types as llama.cpp's quantizer chose them: from the written file (``folder/QUANT.gguf``,
    removed unless ``keep``), or from its dry-run report."""
    args = [f"{q}={FILE_TYPES[q]}" for q in quants]
    cmd = [sys.executable, "-c", _CHILD, str(source), str(folder), "1" if dry_run else "0", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the quantizer child failed: {proc.stderr[-2000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    out: dict[str, dict[str, str]] = {}
    for quant, r in results.items():
        if r["rc"] != 0:
            raise RuntimeError(f"llama.cpp could not quantize to {quant}: {r['log'][-1500:]}")
        if dry_run:
            out[quant] = {m[1]: (m[3] or m[2]).upper() for m in _DRY_LINE.finditer(r["log"])}
        else:
            from localr1.models.gguf_info import ggml_type_name, read_gguf

            info = read_gguf(folder / f"{quant}.gguf", check_data=False)
            out[quant] = {t.name: ggml_type_name(t.ggml_type) for t in info.tensors}
            if not keep:
                (folder / f"{quant}.gguf").unlink()
    return out
