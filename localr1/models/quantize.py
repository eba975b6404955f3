"""Quantizing a GGUF to any llama.cpp type, through llama.cpp's own ``llama_model_quantize``.

The work runs in a child process (``python -m localr1.models.quantize``): llama.cpp's call takes minutes and
cannot be interrupted from Python, while a child can be stopped at once on Ctrl-C. The child reports
progress per tensor; the parent writes to a temporary file next to the output and renames it at the end,
so an interrupted or failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import ctypes
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localr1 import limits
from localr1.engine.backend import init_backend, set_fields
from localr1.engine.bindings import load_bindings
from localr1.errors import InvalidModelFileError, LocalR1Error, UsageError
from localr1.fit.quant_types import BY_NAME, FILE_TYPE_NAMES, NEEDS_IMATRIX
from localr1.models.gguf_info import ggml_type_name, inspect_model
from localr1.output_file import check_new_output, partial_file

# Imported inside the functions that use them: gguf, numpy (heavy to import, and not needed by every command).

# llama.cpp's llama_ftype values, by the names llama-quantize uses (the table GGUF headers are read with).
QUANT_TYPES: dict[str, int] = {name: ftype for ftype, name in FILE_TYPE_NAMES.items() if name != "MXFP4_MOE"}
_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def bits_per_weight(name: str) -> float:
    return BY_NAME[name].bpw if name in BY_NAME else 8.0


def output_estimate(info, to: str) -> int:
    """Bytes the quantized file will take: each tensor at the type llama.cpp's rules give it (exact for the
    architectures localr1 knows), else the type's bits per weight."""
    from localr1.fit.arch import Architecture
    from localr1.fit.quant_rules import ModelFacts, quantized_types, tensor_bytes

    try:
        facts = ModelFacts.of(Architecture.from_gguf(info.metadata))
        tensors = [(t.name, t.shape, ggml_type_name(t.ggml_type)) for t in info.tensors]
        types = quantized_types(tensors, facts, to)
        return sum(tensor_bytes(types[t.name], t.shape) for t in info.tensors) + info.data_offset
    except (ValueError, KeyError, TypeError, ZeroDivisionError):  # a header the rules cannot read
        return int(info.n_params * bits_per_weight(to) / 8) + info.data_offset


@dataclass(frozen=True)
class QuantizeResult:
    source: Path
    output: Path
    source_bytes: int
    output_bytes: int
    to: str


def parse_type(name: str, *, imatrix: bool = False) -> str:
    key = name.upper()
    if key not in QUANT_TYPES:
        raise UsageError(f"unknown quant type {name!r}", hint="See the types with: localr1 quantize MODEL --to list")
    if key in NEEDS_IMATRIX and not imatrix:
        raise UsageError(
            f"{key} needs an importance matrix (--imatrix FILE)",
            hint="Make one with llama.cpp's llama-imatrix (or download the one published with the model), "
            "or use Q2_K or larger.",
        )
    return key


@dataclass
class Imatrix:
    """An importance matrix, normalized as llama-quantize normalizes it: per tensor, the mean squared
    activation of each input column (per expert for MoE tensors)."""

    entries: dict[str, list[float]]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def load_imatrix(path: Path) -> Imatrix:
    """llama-imatrix's output: the GGUF format (``NAME.in_sum2`` + ``NAME.counts``) or the legacy .dat."""
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return _load_gguf_imatrix(path) if magic == b"GGUF" else _load_legacy_imatrix(path)
    except (ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise InvalidModelFileError(f"{path.name} is not a valid importance matrix: {e}") from e


def _load_gguf_imatrix(path: Path) -> Imatrix:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    fields = reader.fields
    if not {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(fields):
        raise ValueError("missing imatrix metadata (imatrix.datasets, chunk_count, chunk_size)")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise ValueError(f"{t.name} must be F32")
                into[t.name.removesuffix(suffix)] = np.asarray(t.data, dtype=np.float32).ravel()
    if not sums or set(sums) != set(counts):
        raise ValueError("sums and counts do not pair up")
    entries = {}
    for name, s in sums.items():
        c = np.rint(counts[name]).astype(np.float64)
        per = s.reshape(len(c), -1).astype(np.float64)
        norm = np.where(c[:, None] > 0, per / np.where(c > 0, c, 1)[:, None], 1.0)
        entries[name] = norm.astype(np.float32).ravel().tolist()
    datasets = [str(d) for d in fields["imatrix.datasets"].contents()]
    return Imatrix(entries, datasets, int(fields["imatrix.chunk_count"].contents()))


def _load_legacy_imatrix(path: Path) -> Imatrix:
    import numpy as np

    data = path.read_bytes()
    (n,) = struct.unpack_from("<i", data, 0)
    if n < 1:
        raise ValueError("no entries")
    pos, entries = 4, {}
    for _ in range(n):
        (length,) = struct.unpack_from("<i", data, pos)
        name = data[pos + 4 : pos + 4 + length].decode()
        pos += 4 + length
        ncall, nval = struct.unpack_from("<ii", data, pos)
        pos += 8
        if nval < 1 or pos + 4 * nval > len(data):
            raise ValueError(f"entry {name!r} is cut short")
        values = np.frombuffer(data, np.float32, nval, pos)
        pos += 4 * nval
        entries[name] = (values / ncall if ncall > 0 else values).astype(np.float32).tolist()
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = struct.unpack_from("<i", data, pos)
        if pos + 8 <= len(data):
            (length,) = struct.unpack_from("<i", data, pos + 4)
            if length > 0:
                datasets.append(data[pos + 8 : pos + 8 + length].decode())
    return Imatrix(entries, datasets, chunks)


def default_output(source: Path, to: str, folder: Path) -> Path:
    stem = source.name.removesuffix(".gguf")
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    for name in sorted(QUANT_TYPES, key=len, reverse=True):  # drop the source's quant from the name
        stem = re.sub(rf"[-.]{re.escape(name)}$", "", stem, flags=re.I)
    return folder / f"{stem}-{to}.gguf"


def quantize(
    source: Path,
    to: str,
    output: Path,
    *,
    threads: int | None = None,
    imatrix: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    free_bytes: Callable[[Path], int] | None = None,
) -> QuantizeResult:

    limits.threads(threads)
    to = parse_type(to, imatrix=imatrix is not None)
    info = inspect_model(source)
    if imatrix is not None:
        if not imatrix.is_file():
            raise UsageError(f"{imatrix} does not exist", hint="Pass the .gguf or .dat file llama-imatrix wrote.")
        names = {t.name for t in info.tensors}
        if not set(load_imatrix(imatrix).entries) & names:
            raise UsageError(
                f"{imatrix.name} holds no tensor of {source.name}: it was computed for another model",
                hint="Use the importance matrix of this model.",
            )
    estimate = output_estimate(info, to)
    check_new_output(
        output, estimate, free_bytes, what=f"the {to} file", hint="Free some space, or write elsewhere with -o."
    )
    requantize = info.quant_name not in ("F32", "F16", "BF16")
    with partial_file(output) as partial:
        cmd = [sys.executable, "-m", "localr1.models.quantize", str(source), str(partial), str(QUANT_TYPES[to])]
        cmd += [str(threads or 0), "1" if requantize else "0", str(imatrix or "")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        errors: list[str] = []
        try:
            for line in proc.stdout:
                if line.startswith("PROGRESS "):
                    done, total = map(int, line.split()[1:3])
                    if progress:
                        progress(done, total)
                elif line.strip():
                    errors.append(line.strip())
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            reason = "; ".join((errors + (proc.stderr.read() or "").strip().splitlines())[-2:]) or "no reason given"
            raise LocalR1Error(f"llama.cpp could not quantize {source.name}: {reason}")
    return QuantizeResult(source, output, sum(p.stat().st_size for p in info.split_paths), output.stat().st_size, to)


def _imatrix_params(path: str) -> dict:
    """The NULL-terminated arrays llama_model_quantize_params takes for an importance matrix, and the
    quantize.imatrix.* keys llama-quantize records in the output (kept alive by the returned dict)."""

    C = load_bindings()

    im = load_imatrix(Path(path))
    arrays = [(name.encode(), (ctypes.c_float * len(v))(*v), len(v)) for name, v in im.entries.items()]
    table = (C.llama_model_imatrix_data * (len(arrays) + 1))()
    for i, (name, values, n) in enumerate(arrays):
        table[i].name, table[i].data, table[i].size = name, ctypes.cast(values, ctypes.POINTER(ctypes.c_float)), n
    kvs = [("quantize.imatrix.file", 3, path), ("quantize.imatrix.entries_count", 0, len(arrays))]  # 3: STR, 0: INT
    if im.datasets:
        kvs.insert(1, ("quantize.imatrix.dataset", 3, im.datasets[0]))
    if im.chunk_count > 0:
        kvs.append(("quantize.imatrix.chunks_count", 0, im.chunk_count))
    overrides = (C.llama_model_kv_override * (len(kvs) + 1))()
    for i, (key, tag, value) in enumerate(kvs):
        overrides[i].key, overrides[i].tag = key.encode(), tag
        if tag == 3:
            overrides[i].value.val_str = str(value).encode()[:127]
        else:
            overrides[i].value.val_i64 = int(value)
    return {"imatrix": table, "kv_overrides": overrides, "_keep": arrays}


def _worker(source: str, dest: str, ftype: int, threads: int, requantize: bool, imatrix: str = "") -> int:
    """In the child: run llama_model_quantize and print progress lines the parent reads."""

    lib = init_backend()
    extra = _imatrix_params(imatrix) if imatrix else {}

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def on_log(level, text, _data):
        msg = text.decode("utf-8", "replace") if text else ""
        if m := _PROGRESS.search(msg):
            print(f"PROGRESS {m.group(1)} {m.group(2)}", flush=True)
        elif level == 2 or "error" in msg.lower():  # GGML_LOG_LEVEL_ERROR
            print(msg.strip(), flush=True)

    lib.llama_log_set(on_log, None)
    params = set_fields(
        lib.llama_model_quantize_default_params(), ftype=ftype, nthread=threads, allow_requantize=requantize
    )
    if extra:
        params.imatrix = ctypes.cast(extra["imatrix"], type(params.imatrix))
        params.kv_overrides = ctypes.cast(extra["kv_overrides"], type(params.kv_overrides))
    return lib.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params))


if __name__ == "__main__":
    src, dst, ftype_arg, threads_arg, requant, imatrix_arg = sys.argv[1:7]
    sys.exit(1 if _worker(src, dst, int(ftype_arg), int(threads_arg), requant == "1", imatrix_arg) else 0)
