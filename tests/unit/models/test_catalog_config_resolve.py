from __future__ import annotations

import os

import pytest
from ggufs import write_gguf

from localr1.config import load_config
from localr1.errors import CatalogError, ConfigError, ModelNotFoundError
from localr1.models.catalog import load_catalog, parse_catalog, split_name
from localr1.models.resolve import local_models, resolve_model

ENTRY = """
[models."mine:1b"]
title = "My distill"
family = "distill"
architecture = "qwen2"
params_b = 1.0
source_repo = "me/mine"
gguf_repo = "me/mine-GGUF"
default_quant = "Q4_K_M"
license = "MIT"
[models."mine:1b".arch]
arch = "qwen2"
n_layer = 2
n_embd = 64
n_ff = 128
n_head = 4
n_head_kv = 2
head_dim = 16
n_vocab = 1000
ctx_train = 4096
[models."mine:1b".files]
Q4_K_M = "mine-Q4_K_M.gguf"
"""


def test_builtin_catalog_has_every_r1_build():
    catalog = load_catalog(include_user=False)
    for name in ("r1:1.5b", "r1:7b", "r1:8b", "r1:14b", "r1:32b", "r1:70b", "r1-0528:8b", "r1:671b"):
        assert name in catalog
    assert catalog["r1:1.5b"].aime2024 == 28.9
    assert catalog["r1:7b"].aime2024 == 55.5
    assert catalog["r1:32b"].aime2024 == 72.6
    assert all(m.license == "MIT" for m in catalog.values())
    assert catalog["r1:671b"].family == "moe"


def test_user_catalog_extends_the_builtin(isolated_dirs):
    user = isolated_dirs / "config" / "models.toml"
    user.parent.mkdir(parents=True)
    user.write_text(ENTRY)
    catalog = load_catalog()
    assert catalog["mine:1b"].source == str(user)
    assert "r1:7b" in catalog


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('license = "MIT"', 'licence = "MIT"'), "unknown field 'licence'"),
        (lambda s: s.replace('title = "My distill"\n', ""), "missing the field 'title'"),
        (lambda s: s.replace("params_b = 1.0", 'params_b = "1"'), "params_b has the wrong type"),
        (lambda s: s.replace('default_quant = "Q4_K_M"', 'default_quant = "Q9"'), "default_quant 'Q9'"),
        (lambda s: s.replace('"mine-Q4_K_M.gguf"', '"../../etc/x.gguf"'), "relative path"),
        (lambda s: s.replace('family = "distill"', 'family = "dense"'), "family must be"),
        (lambda s: s + "\n[oops]\n", "only"),
        (lambda s: s.replace("n_layer = 2\n", ""), "architecture is missing 'n_layer'"),
        (lambda s: s.replace("n_ff = 128", "n_ff = -1"), "n_ff must be a non-negative int"),
        (lambda s: s.replace("n_ff = 128", "n_fff = 128"), "unknown architecture field 'n_fff'"),
        (lambda s: s.replace('arch = "qwen2"', 'arch = "gpt2"'), "'gpt2' is not one of"),
        (lambda s: s.replace('arch = "qwen2"', 'arch = "llama"'), "differs from arch.arch"),
        (lambda s: s + "\n[[[", "not valid TOML"),
        (lambda s: s + '[models."mine:1b".sizes]\nQ9 = 5\n', "sizes names 'Q9'"),
        (lambda s: s + '[models."mine:1b".sizes]\nQ4_K_M = -5\n', "positive number of bytes"),
        (lambda s: s + '[models."mine:1b".sizes]\nQ4_K_M = "1GB"\n', "positive number of bytes"),
    ],
)
def test_catalog_errors_name_the_entry(edit, message):
    with pytest.raises(CatalogError, match=message) as exc:
        parse_catalog(edit(ENTRY), "user.toml")
    assert "user.toml" in str(exc.value)


def test_listed_sizes_are_what_the_planner_plans_with():
    """A build whose size the Hub lists is planned at that size (the 671B builds: unsloth's "GB" are GiB)."""
    from localr1.fit.candidates import from_catalog
    from localr1.models.catalog import load_catalog

    catalog = load_catalog(include_user=False)
    listed = {(m.name, q): size for m in catalog.values() for q, size in m.sizes.items()}
    assert listed[("r1:671b", "UD-IQ1_S")] == 140_200_000_000
    assert listed[("r1-0528:671b", "UD-IQ1_S")] > 1.3 * listed[("r1:671b", "UD-IQ1_S")]
    for c in from_catalog(catalog, include_local=False):
        if (c.name, c.quant) in listed:
            assert abs(c.weights.total - listed[(c.name, c.quant)]) < 1000  # scaled, to the byte but rounding
    assert all(m.sizes_note for m in catalog.values() if m.sizes)  # exact or rounded: each entry says
    parsed = parse_catalog(ENTRY + '[models."mine:1b".sizes]\nQ4_K_M = 1_234_567\n', "user.toml")
    assert parsed["mine:1b"].sizes == {"Q4_K_M": 1_234_567}


def test_split_name():
    assert split_name("r1:14b:Q5_K_M") == ("r1:14b", "Q5_K_M")
    assert split_name("r1:14b") == ("r1:14b", None)


def test_config(isolated_dirs, monkeypatch):
    path = isolated_dirs / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert load_config().default_model is None
    path.write_text('default_model = "r1:7b"\nctx = 4096\n')
    assert load_config().ctx == 4096
    monkeypatch.setenv("LOCALR1_MODEL", "r1:14b")
    assert load_config().default_model == "r1:14b"
    path.write_text("ctx = true\n")
    with pytest.raises(ConfigError, match="ctx must be a int"):
        load_config()
    path.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config()
    path.write_text("ctx = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config()
    path.write_text('kv_type = "q8_0"\n')
    assert load_config().kv_type == "q8_0"
    path.write_text('kv_type = "q3_k"\n')
    with pytest.raises(ConfigError, match="kv_type must be one of f16, q8_0, q4_0"):
        load_config()


def test_resolve_paths(tmp_path, small_gguf):
    config = load_config()
    assert resolve_model(str(small_gguf), config).path == small_gguf
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_model(str(tmp_path / "missing.gguf"), config)
    assert resolve_model(str(tmp_path), config).path == small_gguf  # a folder holding one model


def test_resolve_catalog_names(isolated_dirs):
    config = load_config()
    with pytest.raises(ModelNotFoundError, match="unknown model 'r1:99b'") as exc:
        resolve_model("r1:99b", config)
    assert "r1:7b" in exc.value.hint
    with pytest.raises(ModelNotFoundError, match="not downloaded") as exc:
        resolve_model("r1:7b", config)
    assert exc.value.hint == "Download it with: localr1 pull r1:7b:Q4_K_M"
    # found in localr1's models folder
    models = isolated_dirs / "models"
    models.mkdir()
    write_gguf(models / "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf")
    found = resolve_model("r1:7b", config)
    assert found.name == "r1:7b:Q4_K_M" and found.catalog.name == "r1:7b"
    # and in the Hugging Face cache, as huggingface_hub lays it out
    snap = isolated_dirs / "hf" / "models--unsloth--DeepSeek-R1-Distill-Qwen-14B-GGUF" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    write_gguf(snap / "DeepSeek-R1-Distill-Qwen-14B-Q5_K_M.gguf")
    assert resolve_model("r1:14b:Q5_K_M", config).path.parent == snap


def test_default_model_choice(isolated_dirs):
    config = load_config()
    with pytest.raises(ModelNotFoundError, match="none found") as exc:
        resolve_model(None, config)
    assert "localr1 pull r1:7b" in exc.value.hint
    models = isolated_dirs / "models"
    models.mkdir()
    only = write_gguf(models / "only.gguf")
    assert resolve_model(None, config).path == only
    write_gguf(models / "second.gguf")
    with pytest.raises(ModelNotFoundError, match="2 are on this machine"):
        resolve_model(None, config)
    config_path = isolated_dirs / "config" / "config.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(f'default_model = "{os.fspath(only)}"\n')
    assert resolve_model(None, load_config()).path == only
    assert len(local_models()) == 2
