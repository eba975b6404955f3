"""localr1 convert on tiny checkpoints of each R1 architecture, made with transformers.

Three checks of the same files: byte equality with llama.cpp's own converter (run from the sdist of the
installed llama-cpp-python), logits of llama.cpp against the PyTorch forward pass, and tokenization of the
converted vocabulary against the original tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import checkpoints  # noqa: E402
import model_factory  # noqa: E402

from localr1.cli.app import app  # noqa: E402
from localr1.models.convert import convert  # noqa: E402

pytestmark = pytest.mark.integration

# family -> dtype of the saved weights (the R1 distills ship BF16; F32 checks the other path)
FAMILIES = {"qwen2": "bfloat16", "llama": "float32", "qwen3": "float32", "deepseek3": "bfloat16"}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
TEXTS = [
    "Prove that sqrt(2) is irrational.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != 0: print(f'{x=}')",
    r"Let $\frac{a}{b} = \sqrt{2}$, so $a^2 = 2b^2$ and \boxed{\text{contradiction}}.",
    "Ünïcödé naïve café Straße — Привет, мир! 你好世界 こんにちは 🚀🦙😶‍🌫️ ✅",
    "   leading spaces,\n\n\nnewlines\r\n and 1234567 3.14159 1e-9 '''quotes''' I've 'RE",
    "<｜User｜>What is 2+2?<｜Assistant｜><think>\nreasoning\n</think>\nThe answer is 4.",
]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {fam: checkpoints.make_checkpoint(root / fam, fam, dtype=dt) for fam, dt in FAMILIES.items()}


@pytest.fixture(scope="module")
def converted(ckpts, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("converted")
    return {
        (fam, t): convert(folder, out / f"{fam}-{t}.gguf", outtype=t).output
        for fam, folder in ckpts.items()
        for t in OUTTYPES
    }


@pytest.fixture(scope="module")
def reference(ckpts, converted, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """The same conversions by llama.cpp's convert_hf_to_gguf.py, in one process."""
    try:
        root = model_factory.llama_cpp_converter_dir()
    except model_factory.ModelUnavailable as e:
        pytest.skip(str(e))
    import gguf

    out = tmp_path_factory.mktemp("reference")
    jobs, paths = [], {}
    for (fam, t), ours in converted.items():
        pre = str(gguf.GGUFReader(ours).fields["tokenizer.ggml.pre"].contents())
        paths[fam, t] = out / f"{fam}-{t}.gguf"
        jobs.append({"pre": pre, "args": [str(ckpts[fam]), "--outfile", str(paths[fam, t]), "--outtype", t]})
    (out / "jobs.json").write_text(json.dumps(jobs))
    script = Path(__file__).parent.parent / "reference_convert.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_LOCAL_GGUF": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(root), str(out / "jobs.json")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return paths


def _fields(path: Path) -> list[tuple[str, object]]:
    import gguf

    reader = gguf.GGUFReader(path)
    return [(k, f.contents()) for k, f in reader.fields.items()]


def _tensors(path: Path) -> list[tuple[str, str, tuple, bytes]]:
    import gguf

    return [(t.name, t.tensor_type.name, tuple(t.shape), t.data.tobytes()) for t in gguf.GGUFReader(path).tensors]


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_same_file_as_llama_cpps_converter(family, outtype, converted, reference):
    ours, ref = converted[family, outtype], reference[family, outtype]
    ours_kv, ref_kv = _fields(ours), _fields(ref)
    assert [k for k, _ in ours_kv] == [k for k, _ in ref_kv]  # the same keys, in the same order
    for (key, mine), (_, theirs) in zip(ours_kv, ref_kv):
        assert mine == theirs, key
    ours_t, ref_t = _tensors(ours), _tensors(ref)
    assert [t[:3] for t in ours_t] == [t[:3] for t in ref_t]
    for mine, theirs in zip(ours_t, ref_t):
        if mine[0] == "rope_freqs.weight":  # Llama 3.1's RoPE factors: PyTorch's pow vs libm's, within 1 ulp
            a, b = np.frombuffer(mine[3], np.int32), np.frombuffer(theirs[3], np.int32)
            assert np.abs(a - b).max() <= 1
        else:
            assert mine[3] == theirs[3], f"data of {mine[0]}"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    from model_factory import high_level_llama

    # F32 KV cache and no flash attention: the F32 check is then of the weights alone
    llm = high_level_llama(
        path, n_ctx=128, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0, flash_attn=False
    )
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    p, q = _softmax(ref), _softmax(got)
    return {
        "rel": float(np.abs(got - ref).max() / np.abs(ref).max()),
        "top1": float((got.argmax(-1) == ref.argmax(-1)).mean()),
        "kl": float((p * (np.log(p) - np.log(q))).sum(-1).mean()),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_pytorch(family, ckpts, converted, tmp_path, capsys):
    from tokenizers import Tokenizer

    from localr1.models.quantize import quantize

    folder = ckpts[family]
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(" ".join(TEXTS)).ids[:48]
    ref = checkpoints.reference_logits(folder, ids)
    q4 = quantize(converted[family, "f16"], "Q4_K_M", tmp_path / "q4.gguf").output
    control = checkpoints.make_checkpoint(tmp_path / "other", family, dtype="float32", seed=99)
    figures = {
        name: _compare(ref, _llama_logits(path, ids))
        for name, path in (
            ("F32", converted[family, "f32"]),
            ("F16", converted[family, "f16"]),
            ("BF16", converted[family, "bf16"]),
            ("Q8_0", converted[family, "q8_0"]),
            ("Q4_K_M", q4),
            ("other weights", convert(control, tmp_path / "other.gguf", outtype="f32").output),
        )
    }
    with capsys.disabled():
        for name, f in figures.items():
            print(f"\n  {family:9} {name:13} max|Δ|/max|logit| {f['rel']:.1e}  top-1 {f['top1']:.2f}  KL {f['kl']:.1e}")
    assert figures["F32"]["rel"] < 1e-5 and figures["F32"]["top1"] == 1.0
    assert figures["F16"]["rel"] < 1e-2 and figures["F16"]["kl"] < 1e-4
    assert figures["BF16"]["kl"] < 1e-3 and figures["BF16"]["top1"] >= 0.9
    assert figures["Q8_0"]["kl"] < 1e-2 and figures["Q8_0"]["top1"] >= 0.8
    # 4 bits on random weights (no structure to preserve) drift, but stay far closer than another model
    assert figures["Q4_K_M"]["kl"] < 0.5 and figures["Q4_K_M"]["kl"] < figures["other weights"]["kl"] / 3


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenization_matches_the_original_tokenizer(family, ckpts, converted):
    import llama_cpp
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(ckpts[family] / "tokenizer.json"))
    llm = llama_cpp.Llama(str(converted[family, "f16"]), vocab_only=True, verbose=False)
    for text in TEXTS:
        mine = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert mine == original.encode(text, add_special_tokens=False).ids, text
        assert llm.detokenize(mine, special=True).decode() == text


def test_pre_tokenizer_hash_is_computed_as_llama_cpp_computes_it(ckpts, monkeypatch):
    """The hash path (real checkpoints): localr1's chkhsh equals the one transformers gives llama.cpp."""
    import hashlib

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from localr1.models.convert import vocab

    chktxt = vocab._table()["chktxt"]
    for fam in ("llama", "qwen3"):  # the families transformers loads without adding tokens
        theirs = hashlib.sha256(str(AutoTokenizer.from_pretrained(ckpts[fam]).encode(chktxt)).encode()).hexdigest()
        ours = Tokenizer.from_file(str(ckpts[fam] / "tokenizer.json"))
        monkeypatch.setitem(vocab._table()["hashes"], theirs, {"name": "from-the-table", "ref": "test"})
        assert vocab.pre_tokenizer_name(ours, {}) == ("from-the-table", "hash")


# --- the command, and what it refuses ---------------------------------------------------------------------


def test_convert_then_list_quantize_and_ask(runner, ckpts, isolated_dirs):
    result = runner.invoke(app, ["convert", str(ckpts["qwen2"]), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    path = Path(out["output"])
    assert path.parent == isolated_dirs / "models" and out["outtype"] == "bf16"  # auto: the weights' own type
    assert out["architecture"] == "qwen2" and out["pre_tokenizer"] == "deepseek-r1-qwen"
    listed = {m["name"]: m for m in json.loads(runner.invoke(app, ["list", "--json"]).stdout)}
    assert listed[path.name]["quant"] == "BF16"
    again = runner.invoke(app, ["convert", str(ckpts["qwen2"])])
    assert again.exit_code == 2 and "already exists" in again.stderr
    quant = runner.invoke(app, ["quantize", str(path), "--to", "Q4_K_M", "--json"])
    assert quant.exit_code == 0, quant.output
    q4 = json.loads(quant.stdout)["output"]
    answer = runner.invoke(app, ["ask", "hi", "-m", q4, "--max-tokens", "4", "--json"])
    assert answer.exit_code == 0, answer.output
    reply = json.loads(answer.stdout)
    # random weights: a sampled end-of-text token may end the reply before the limit (it did, once in CI)
    used = reply["usage"]["completion_tokens"]
    assert (used == 4 and reply["finish_reason"] == "length") or (1 <= used < 4 and reply["finish_reason"] == "stop")


def _copy(folder: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(folder, dest)
    return dest


def _assert_refused(result, message: str, out_dir: Path) -> None:
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and message in result.stderr, result.stderr
    assert not list(out_dir.glob("*.gguf*")), "no output, not even a partial file"


def test_refuses_broken_or_unsupported_checkpoints(runner, ckpts, tmp_path, isolated_dirs):
    out_dir = isolated_dirs / "models"
    no_config = _copy(ckpts["qwen3"], tmp_path / "no-config")
    (no_config / "config.json").unlink()
    _assert_refused(runner.invoke(app, ["convert", str(no_config)]), "no config.json", out_dir)

    other = _copy(ckpts["qwen3"], tmp_path / "gpt2")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"architectures": ["GPT2LMHeadModel"]}))
    _assert_refused(runner.invoke(app, ["convert", str(other)]), "cannot convert a GPT2LMHeadModel", out_dir)

    truncated = _copy(ckpts["qwen3"], tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1000)
    _assert_refused(runner.invoke(app, ["convert", str(truncated)]), "truncated or corrupt", out_dir)

    no_tokenizer = _copy(ckpts["qwen3"], tmp_path / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    _assert_refused(runner.invoke(app, ["convert", str(no_tokenizer)]), "no tokenizer.json", out_dir)

    bad_type = runner.invoke(app, ["convert", str(ckpts["qwen3"]), "--outtype", "q4_0"])
    _assert_refused(bad_type, "unknown output type", out_dir)


def test_pickle_weights_only_with_the_flag(runner, ckpts, tmp_path, isolated_dirs):
    import torch
    from safetensors.torch import load_file

    folder = _copy(ckpts["llama"], tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    _assert_refused(
        runner.invoke(app, ["convert", str(folder)]), "loading a pickle can run code", isolated_dirs / "models"
    )
    out = tmp_path / "from-pickle.gguf"
    result = runner.invoke(app, ["convert", str(folder), "--allow-pickle", "-o", str(out), "--outtype", "f32"])
    assert result.exit_code == 0, result.output
    ids = [5, 17, 42, 99, 200, 7]
    assert np.allclose(_llama_logits(out, ids), checkpoints.reference_logits(ckpts["llama"], ids), atol=1e-4)


def test_interrupted_or_too_big_leaves_nothing(ckpts, tmp_path):
    from localr1.errors import LocalR1Error

    out = tmp_path / "out.gguf"

    def interrupt(done, total, tensor):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(ckpts["qwen3"], out, outtype="f32", progress=interrupt)
    assert not list(tmp_path.iterdir())
    with pytest.raises(LocalR1Error, match="not enough disk space"):
        convert(ckpts["qwen3"], out, free_bytes=lambda path: 10 << 20)
    assert not list(tmp_path.iterdir())
