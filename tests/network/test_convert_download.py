"""localr1 convert owner/name: the checkpoint comes from the (fake) Hub, safetensors and JSON only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import checkpoints  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from localr1.cli.app import app
from localr1.cli.state import state  # noqa: E402

pytestmark = pytest.mark.network


def test_convert_a_hub_checkpoint(fake_hub, isolated_dirs, tmp_path):
    state.debug = False
    folder = checkpoints.make_checkpoint(tmp_path / "ckpt", "qwen3", dtype="bfloat16")
    repo = "test/Tiny-R1-Qwen3"
    for f in folder.iterdir():
        fake_hub.add(repo, f.name, f.read_bytes())
    for never in ("pytorch_model.bin", "modeling_evil.py", "extra/model.safetensors"):
        fake_hub.add(repo, never, b"must not be fetched")
    runner = CliRunner()
    result = runner.invoke(app, ["convert", repo, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["architecture"] == "qwen3" and Path(out["output"]).name == "Tiny-R1-Qwen3-1.4M-BF16.gguf"
    for never in ("pytorch_model.bin", "modeling_evil.py", "extra/model.safetensors"):
        assert fake_hub.downloads(never) == []
    assert fake_hub.downloads("model.safetensors")
    # the same file as converting a folder of that name
    local = folder.rename(tmp_path / "Tiny-R1-Qwen3")
    result = runner.invoke(app, ["convert", str(local), "-o", str(tmp_path / "l.gguf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "l.gguf").read_bytes() == Path(out["output"]).read_bytes()
    # offline, from the cache
    fake_hub.stop()
    again = runner.invoke(app, ["convert", repo, "--offline", "-o", str(tmp_path / "again.gguf")])
    assert again.exit_code == 0, again.output
