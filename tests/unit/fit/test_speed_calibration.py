"""The GPU speed estimate against published llama.cpp measurements of the same model shapes.

NVIDIA: GPU_EFFICIENCY (capacity.py) was fitted to the first two NVIDIA cases and the M1 Max figure it had
then (the geometric mean of their ratios); the RTX 4090 case was not used to fit it. Each estimate within 30%.
Apple (Metal): METAL_LAYER_S from the two M2 Ultra figures, METAL_SHARE per chip generation from the others;
the M3 Max 70B figure was not used to fit. Each within 20%. The Llama 3 8B / 3.1 8B shape is r1:8b's (its
base), Llama 3 70B's r1:70b's, Qwen3-8B's r1-0528:8b's. Sources with links: docs/performance.md.
"""

from __future__ import annotations

import pytest

from localr1.fit.candidates import from_catalog
from localr1.fit.capacity import METAL_SHARE, METAL_SHARE_UNKNOWN, gpu_efficiency
from localr1.fit.planner import plan_candidate
from localr1.machine.hardware import GPU, Simulation, machine
from localr1.models.catalog import load_catalog
from localr1.units import GiB

CANDIDATES = {c.label: c for c in from_catalog(load_catalog(include_user=False), include_local=False)}
XD = "XiongjieDai/GPU-Benchmarks-on-LLM-Inference README, llama-bench tg512, May 2024"

# (GPU, model shape and quant, published decode tokens/s, RAM of the machine in GiB, source, fitted on it)
PUBLISHED = [
    ("RTX 3080", "r1:8b:Q4_K_M", 111.95, 32, "dmatora/LLM-inference-speed-benchmarks#12, llama-bench tg", True),
    ("RTX 5090", "r1-0528:8b:Q4_K_M", 221.7, 64, "CambrianTech/continuum#1627, qwen3-8B Q4_K_M", True),
    ("RTX 4090", "r1:8b:Q6_K", 93.0, 64, "dmatora/LLM-inference-speed-benchmarks#10, llama-server", False),
    ("M1 Max", "r1:8b:Q4_K_M", 46.2, 64, "brand-o/normiebench#40, llama-bench tg128, Metal, 2026", True),
    ("M1 Max", "r1:8b:Q4_K_M", 35.73, 64, XD, True),
    ("M1 Max", "r1:70b:Q4_K_M", 4.34, 64, XD, True),
    ("M2 Ultra", "r1:8b:Q4_K_M", 78.81, 192, XD, True),
    ("M2 Ultra", "r1:70b:Q4_K_M", 12.48, 192, XD, True),
    ("M3 Max 40-core", "r1:8b:Q4_K_M", 48.97, 64, XD, True),
    ("M3 Max 40-core", "r1:70b:Q4_K_M", 7.65, 64, XD, False),
    ("M4", "r1:8b:Q4_K_M", 20.87, 16, "brand-o/normiebench#3, llama-bench tg128, Metal, 2026", True),
]


@pytest.fixture(autouse=True)
def no_env_hw(monkeypatch):
    monkeypatch.delenv("LOCALR1_HW", raising=False)


@pytest.mark.parametrize(("gpu", "label", "published", "ram", "source", "fitted"), PUBLISHED)
def test_gpu_estimate_near_published(gpu, label, published, ram, source, fitted):
    hw = machine(Simulation(gpu=gpu, ram=ram * GiB, disk=1024 * GiB))
    plan = plan_candidate(CANDIDATES[label], hw, want_ctx=4096, keep_ctx=True, min_tps=0, kv_type="f16")
    apple = hw.gpus[0].vendor == "apple"
    assert plan.mode == ("unified" if apple else "gpu")
    bar = 0.20 if apple else 0.30
    assert abs(plan.decode_tps / published - 1) <= bar, (gpu, label, plan.decode_tps, published, source)


@pytest.mark.parametrize(
    ("name", "share"),
    [
        ("Apple M1 Pro", METAL_SHARE[1]),
        ("Apple M2 Max", METAL_SHARE[2]),
        ("Apple M3", METAL_SHARE[3]),
        ("Apple M4 Max", METAL_SHARE[4]),
        ("Apple M5 Pro", METAL_SHARE[max(METAL_SHARE)]),  # a newer chip: at least the newest known share
        ("Apple GPU", METAL_SHARE_UNKNOWN),
    ],
)
def test_metal_share_by_chip_generation(name, share):
    assert gpu_efficiency(GPU(name, "apple", 0, 0, unified=True, bandwidth_gbs=100)) == share


def test_a_faster_chip_generation_is_estimated_faster_at_the_same_bandwidth():
    plans = []
    for gpu in ("M1 Max", "M2 Max"):  # both 400 GB/s
        hw = machine(Simulation(gpu=gpu, ram=64 * GiB, disk=1024 * GiB))
        plans.append(plan_candidate(CANDIDATES["r1:8b:Q4_K_M"], hw, want_ctx=4096, keep_ctx=True, min_tps=0))
    assert plans[1].decode_tps > plans[0].decode_tps
