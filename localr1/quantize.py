"""Quantizing a GGUF to any llama.cpp type, through llama.cpp's own ``llama_model_quantize``.

The work runs in a child process (``python -m localr1.quantize``): llama.cpp's call takes minutes and
cannot be interrupted from Python, while a child can be stopped at once on Ctrl-C. The child reports
progress per tensor; the parent writes to a temporary file next to the output and renames it at the end,
so an interrupted or failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localr1.errors import LocalR1Error, UsageError
from localr1.gguf_info import FILE_TYPE_NAMES, inspect_model
from localr1.memory import BITS_PER_WEIGHT

# llama.cpp's llama_ftype values, by the names llama-quantize uses (the table GGUF headers are read with).
QUANT_TYPES: dict[str, int] = {name: ftype for ftype, name in FILE_TYPE_NAMES.items() if name != "MXFP4_MOE"}
# Types whose quality needs an importance matrix (llama.cpp refuses or degrades badly without one).
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"}
_APPROX_BPW = {"Q5_0": 5.5, "Q5_1": 6.0, "IQ2_XXS": 2.06, "IQ2_XS": 2.31, "IQ2_S": 2.5, "IQ2_M": 2.7, "IQ1_S": 1.56,
               "IQ1_M": 1.75, "TQ1_0": 1.69, "TQ2_0": 2.06, "Q2_K_S": 2.96, "IQ3_XXS": 3.06, "IQ3_XS": 3.3,
               "IQ3_S": 3.44, "IQ3_M": 3.66, "IQ4_NL": 4.5}  # fmt: skip
_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def bits_per_weight(name: str) -> float:
    return BITS_PER_WEIGHT.get(name, _APPROX_BPW.get(name, 8.0))


@dataclass(frozen=True)
class QuantizeResult:
    source: Path
    output: Path
    source_bytes: int
    output_bytes: int
    to: str


def parse_type(name: str) -> str:
    key = name.upper()
    if key not in QUANT_TYPES:
        raise UsageError(f"unknown quant type {name!r}", hint="See the types with: localr1 quantize MODEL --to list")
    if key in NEEDS_IMATRIX:
        raise UsageError(
            f"{key} needs an importance matrix, which localr1 does not compute yet",
            hint="Use Q2_K or larger, or llama.cpp's llama-imatrix and llama-quantize.",
        )
    return key


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
    progress: Callable[[int, int], None] | None = None,
    free_bytes: Callable[[Path], int] | None = None,
) -> QuantizeResult:
    to = parse_type(to)
    info = inspect_model(source)
    if output.exists():
        raise UsageError(f"{output} already exists", hint="Choose another name with -o, or delete it first.")
    estimate = int(info.n_params * bits_per_weight(to) / 8) + info.data_offset
    if free_bytes is not None:
        free = free_bytes(output.parent)
        if estimate + (64 << 20) > free:
            raise LocalR1Error(
                f"not enough disk space: the {to} file needs about {estimate / (1 << 30):.1f} GiB, "
                f"{free / (1 << 30):.1f} GiB is free in {output.parent}",
                hint="Free some space, or write elsewhere with -o.",
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    requantize = info.quant_name not in ("F32", "F16", "BF16")
    cmd = [sys.executable, "-m", "localr1.quantize", str(source), str(partial), str(QUANT_TYPES[to])]
    cmd += [str(threads or 0), "1" if requantize else "0"]
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
        if proc.returncode != 0:
            reason = "; ".join((errors + (proc.stderr.read() or "").strip().splitlines())[-2:]) or "no reason given"
            raise LocalR1Error(f"llama.cpp could not quantize {source.name}: {reason}")
        os.replace(partial, output)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        partial.unlink(missing_ok=True)
        raise
    return QuantizeResult(source, output, sum(p.stat().st_size for p in info.split_paths), output.stat().st_size, to)


def _worker(source: str, dest: str, ftype: int, threads: int, requantize: bool) -> int:
    """In the child: run llama_model_quantize and print progress lines the parent reads."""
    import ctypes

    from localr1.engine.llama_cpp import init_backend, set_fields

    lib = init_backend()

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
    return lib.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params))


if __name__ == "__main__":
    src, dst, ftype_arg, threads_arg, requant = sys.argv[1:6]
    sys.exit(1 if _worker(src, dst, int(ftype_arg), int(threads_arg), requant == "1") else 0)
