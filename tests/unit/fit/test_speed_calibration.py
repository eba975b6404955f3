"""The GPU speed estimate against published llama.cpp measurements of the same model shapes.

GPU_EFFICIENCY (budget.py) was fitted to the first three cases (the geometric mean of their ratios); the
last two were not used to fit it. The Llama 3.1 8B shape is r1:8b's (its base), Qwen3-8B's is
r1-0528:8b's. Each estimate must be within 30% of the published decode speed (docs/performance.md).
"""

from __future__ import annotations

import pytest

from localr1.fit.candidates import from_catalog
from localr1.fit.planner import plan_candidate
from localr1.machine.hardware import Simulation, machine
from localr1.models.catalog import load_catalog
from localr1.units import GiB

CANDIDATES = {c.label: c for c in from_catalog(load_catalog(include_user=False), include_local=False)}

# (GPU, model shape and quant, published decode tokens/s, RAM of the machine in GiB, source, fitted on it)
PUBLISHED = [
    ("RTX 3080", "r1:8b:Q4_K_M", 111.95, 32, "dmatora/LLM-inference-speed-benchmarks#12, llama-bench tg", True),
    ("RTX 5090", "r1-0528:8b:Q4_K_M", 221.7, 64, "CambrianTech/continuum#1627, qwen3-8B Q4_K_M", True),
    ("M1 Max", "r1:8b:Q4_K_M", 46.2, 64, "brand-o/normiebench#40, llama-bench tg128, Metal", True),
    ("RTX 4090", "r1:8b:Q6_K", 93.0, 64, "dmatora/LLM-inference-speed-benchmarks#10, llama-server", False),
    ("M4", "r1:8b:Q4_K_M", 20.87, 16, "brand-o/normiebench#3, llama-bench tg128, Metal", False),
]


@pytest.fixture(autouse=True)
def no_env_hw(monkeypatch):
    monkeypatch.delenv("LOCALR1_HW", raising=False)


@pytest.mark.parametrize(("gpu", "label", "published", "ram", "source", "fitted"), PUBLISHED)
def test_gpu_estimate_within_30_percent_of_published(gpu, label, published, ram, source, fitted):
    hw = machine(Simulation(gpu=gpu, ram=ram * GiB, disk=1024 * GiB))
    plan = plan_candidate(CANDIDATES[label], hw, want_ctx=4096, keep_ctx=True, min_tps=0, kv_type="f16")
    assert plan.mode in ("gpu", "unified")
    assert abs(plan.decode_tps / published - 1) <= 0.30, (gpu, label, plan.decode_tps, published, source)
