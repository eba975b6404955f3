"""localr1 quantize through llama.cpp's quantizer, on the tiny R1 model and SmolLM2."""

from __future__ import annotations

import json
import subprocess

import pytest

from localr1.cli.app import app
from localr1.errors import LocalR1Error, UsageError
from localr1.models import quantize as q
from localr1.models.gguf_info import read_gguf

pytestmark = pytest.mark.integration


def test_quantize_to_q8_0_then_run_it(runner, tiny_r1, isolated_dirs):
    result = runner.invoke(app, ["quantize", str(tiny_r1), "--to", "Q8_0", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    path = isolated_dirs / "models" / f"{tiny_r1.stem}-Q8_0.gguf"
    assert out["output"] == str(path) and out["output_bytes"] < 0.7 * out["source_bytes"]
    info = read_gguf(path)
    assert info.quant_name == "Q8_0" and info.chat_template == read_gguf(tiny_r1).chat_template
    assert not list(path.parent.glob("*.partial"))
    listed = [m["name"] for m in json.loads(runner.invoke(app, ["list", "--json"]).stdout)]
    assert path.name in listed
    answer = runner.invoke(app, ["ask", "hi", "-m", str(path), "--max-tokens", "4", "--json", "--seed", "1"])
    assert answer.exit_code == 0 and json.loads(answer.stdout)["usage"]["completion_tokens"] == 4


def test_requantize_a_quantized_model(runner, smollm2, tmp_path):
    dest = tmp_path / "smol-Q4_0.gguf"
    result = runner.invoke(app, ["quantize", str(smollm2), "--to", "q4_0", "-o", str(dest)])
    assert result.exit_code == 0, result.output
    assert read_gguf(dest).quant_name == "Q4_0" and "->" in result.stdout


def test_type_list_and_bad_types(runner, tiny_r1):
    listed = json.loads(runner.invoke(app, ["quantize", "x", "--to", "list", "--json"]).stdout)
    assert {"type": "Q4_K_M", "bits_per_weight": 4.89} in listed and len(listed) > 25
    for to, message in (("Q9", "unknown quant type"), ("IQ2_XXS", "--imatrix")):
        result = runner.invoke(app, ["quantize", str(tiny_r1), "--to", to])
        assert result.exit_code == 2 and message in result.stderr


def test_refuses_to_overwrite_and_checks_disk_space(tiny_r1, tmp_path):
    existing = tmp_path / "out.gguf"
    existing.write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        q.quantize(tiny_r1, "Q8_0", existing)
    with pytest.raises(LocalR1Error, match="not enough disk space"):
        q.quantize(tiny_r1, "Q8_0", tmp_path / "new.gguf", free_bytes=lambda _: 1 << 20)
    assert not list(tmp_path.glob("new.gguf*"))


def test_a_failed_run_leaves_nothing_behind(tiny_r1, tmp_path, monkeypatch):
    real_popen = subprocess.Popen

    def failing(cmd, **kwargs):
        script = "import sys; open(sys.argv[1], 'w').write('half'); print('PROGRESS 3 10', flush=True); sys.exit(1)"
        return real_popen(["python3", "-c", script, cmd[4]], **kwargs)

    monkeypatch.setattr(q.subprocess, "Popen", failing)
    seen = []
    with pytest.raises(LocalR1Error, match="could not quantize"):
        q.quantize(tiny_r1, "Q8_0", tmp_path / "out.gguf", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 10)] and list(tmp_path.iterdir()) == []


def test_default_output_name(tmp_path):
    from pathlib import Path

    assert q.default_output(Path("DeepSeek-R1-Distill-Qwen-7B-Q8_0.gguf"), "Q4_K_M", tmp_path).name == (
        "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"
    )
    assert q.default_output(Path("m-f16-00001-of-00002.gguf"), "Q8_0", tmp_path).name == "m-Q8_0.gguf"
