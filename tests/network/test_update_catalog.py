"""packaging/update_catalog.py against the fake Hub: paths and exact sizes from the listing, nothing else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from catalogs import tiny_entry
from ggufs import write_gguf

from localr1.models.catalog import parse_catalog

pytestmark = pytest.mark.network

REPO = "test/tiny-GGUF"
SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "update_catalog.py"


def load_script():
    spec = importlib.util.spec_from_file_location("update_catalog", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_catalog_from_the_hub(fake_hub, tmp_path, capsys):
    text = "# my catalog\n" + tiny_entry(
        "tiny:1b", REPO, {"Q4_K_M": "split/tiny-Q4_K_M-00001-of-00002.gguf", "Q8_0": "tiny-Q8_0.gguf"}
    )
    catalog = tmp_path / "models.toml"
    catalog.write_text(text)
    parts = [write_gguf(tmp_path / f"p{i}.gguf", n_tensors=i).read_bytes() for i in (1, 2, 3)]
    for i, data in enumerate(parts, 1):  # the Hub re-uploaded it in three parts
        fake_hub.add(REPO, f"split/tiny-Q4_K_M-0000{i}-of-00003.gguf", data)
    q8 = write_gguf(tmp_path / "q8.gguf").read_bytes()
    fake_hub.add(REPO, "tiny-Q8_0.gguf", q8)
    script = load_script()

    assert script.main(["--catalog", str(catalog), "--dry-run"]) == 0
    assert catalog.read_text() == text  # a dry run writes nothing
    assert script.main(["--catalog", str(catalog)]) == 0
    out = capsys.readouterr().out
    assert "split/tiny-Q4_K_M-00001-of-00002.gguf -> split/tiny-Q4_K_M-00001-of-00003.gguf" in out
    model = parse_catalog(catalog.read_text(), "models.toml")["tiny:1b"]
    assert model.files["Q4_K_M"] == "split/tiny-Q4_K_M-00001-of-00003.gguf"
    assert model.sizes == {"Q4_K_M": sum(len(p) for p in parts), "Q8_0": len(q8)}
    assert model.sizes_note.startswith("exact, from the Hub's listing on ")
    assert catalog.read_text().startswith("# my catalog\n")  # comments kept
    assert script.main(["--catalog", str(catalog)]) == 0
    assert "the catalog matches the Hub" in capsys.readouterr().out


def test_update_catalog_without_the_hub(tmp_path, capsys):
    catalog = tmp_path / "models.toml"
    catalog.write_text(tiny_entry("tiny:1b", REPO, {"Q8_0": "tiny-Q8_0.gguf"}))
    assert load_script().main(["--catalog", str(catalog)]) == 1
    assert "tiny:1b:" in capsys.readouterr().err
