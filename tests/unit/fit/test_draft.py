"""A draft model goes beside the target's plan (fit/draft.py): on the GPU where the plan leaves room, else in
RAM, else not at all, and never at the cost of the target's GPU layers or context."""

from __future__ import annotations

import pytest

from localr1.errors import CatalogError
from localr1.fit.candidates import from_catalog
from localr1.fit.draft import place_beside
from localr1.fit.memory import estimate
from localr1.fit.planner import choose, plan_candidate
from localr1.machine.hardware import Simulation, machine
from localr1.models.catalog import load_catalog, parse_catalog
from localr1.units import GiB

CATALOG = load_catalog(include_user=False)
BUILDS = {c.label: c for c in from_catalog(CATALOG, include_local=False)}


@pytest.fixture(autouse=True)
def no_env_hw(monkeypatch):
    monkeypatch.delenv("LOCALR1_HW", raising=False)


def _beside(target: str, sim: Simulation, ctx: int = 16384):
    hw = machine(sim)
    plan = plan_candidate(BUILDS[target], hw, min_tps=0.0, want_ctx=ctx)
    draft = BUILDS["r1:1.5b:Q4_K_M"]
    placed, why = place_beside(draft, plan)
    return plan, placed, why, draft


def test_the_draft_goes_on_the_gpu_when_the_target_leaves_room():
    plan, placed, _, draft = _beside("r1:14b:Q4_K_M", Simulation(vram=24 * GiB, ram=64 * GiB, disk=1 << 40))
    assert plan.n_gpu_layers == -1 and placed.device == "GPU" and placed.n_gpu_layers == -1
    need = estimate(draft.arch, draft.weights, plan.n_ctx, -1)
    assert placed.bytes == need.gpu_total  # weights, KV cache for the same context, compute buffer
    assert plan.memory.gpu_total + placed.bytes <= plan.budget.gpu


def test_the_draft_goes_to_ram_when_the_gpu_is_full():
    plan, placed, _, _ = _beside("r1:32b:Q4_K_M", Simulation(vram=20 * GiB, ram=64 * GiB, disk=1 << 40))
    assert placed.device == "RAM" and placed.n_gpu_layers == 0
    assert plan.memory.cpu_total + placed.bytes <= plan.budget.ram


def test_the_draft_is_left_out_rather_than_shrinking_the_target():
    sim = Simulation(gpu="none", ram=14 * GiB, disk=1 << 40)
    alone = plan_candidate(BUILDS["r1:14b:Q4_K_M"], machine(sim), min_tps=0.0, want_ctx=16384)
    plan, placed, why, _ = _beside("r1:14b:Q4_K_M", sim)
    assert placed is None and "the target leaves" in why
    assert (plan.n_ctx, plan.n_gpu_layers) == (alone.n_ctx, alone.n_gpu_layers)


def test_unified_memory_counts_both_in_one_pool():
    plan, placed, _, _ = _beside("r1:7b:Q4_K_M", Simulation(gpu="M2 Max", ram=64 * GiB, disk=1 << 40))
    assert placed.device == "GPU"
    assert plan.memory.gpu_total + plan.memory.cpu_total + placed.bytes <= plan.budget.gpu
    tight = Simulation(gpu="M2", ram=16 * GiB, disk=1 << 40)
    plan = choose(list(BUILDS.values()), machine(tight))
    _, placed, why, _ = _beside(plan.label, tight, ctx=plan.n_ctx)
    assert placed is not None or "unified memory" in why


def test_the_catalog_names_drafts_with_the_same_tokenizer():
    drafts = {name: m.draft for name, m in CATALOG.items() if m.draft}
    assert drafts == {"r1:7b": "r1:1.5b", "r1:14b": "r1:1.5b", "r1:32b": "r1:1.5b", "r1:70b": "r1:8b"}
    for name, draft in drafts.items():
        assert abs(CATALOG[name].arch.n_vocab - CATALOG[draft].arch.n_vocab) <= 128


def test_a_user_catalog_draft_must_exist_and_share_the_vocabulary(tmp_path):
    from localr1.models import catalog as catalog_mod

    entry = CATALOG["r1:7b"]
    toml = f'''
[models."mine"]
title = "mine"
family = "distill"
architecture = "qwen2"
params_b = 7.6
source_repo = "{entry.source_repo}"
gguf_repo = "{entry.gguf_repo}"
default_quant = "Q4_K_M"
license = "MIT"
draft = "nope"
[models."mine".arch]
arch = "qwen2"
n_layer = 28
n_embd = 3584
n_ff = 18944
n_head = 28
n_head_kv = 4
head_dim = 128
n_vocab = 152064
ctx_train = 131072
[models."mine".files]
Q4_K_M = "mine.gguf"
'''
    user = tmp_path / "models.toml"
    user.write_text(toml)
    catalog_mod._load.cache_clear()
    with pytest.raises(CatalogError, match="not another model"):
        load_catalog(user_file=user)
    user.write_text(toml.replace('draft = "nope"', 'draft = "r1:8b"'))  # Llama 3's tokenizer: 128,256 tokens
    catalog_mod._load.cache_clear()
    with pytest.raises(CatalogError, match="another vocabulary"):
        load_catalog(user_file=user)
    user.write_text(toml.replace('draft = "nope"', 'draft = "r1:1.5b"'))
    catalog_mod._load.cache_clear()
    assert load_catalog(user_file=user)["mine"].draft == "r1:1.5b"
    catalog_mod._load.cache_clear()
    assert parse_catalog(toml, "x")["mine"].draft == "nope"  # (checked once the whole catalog is known)
