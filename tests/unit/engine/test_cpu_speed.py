"""The CPU's measured kernel speed: cached per CPU, threads and llama.cpp version, and used by the planner."""

from __future__ import annotations

import json

import pytest

from localr1.engine import cpu_speed
from localr1.machine.hardware import Simulation, machine
from localr1.units import GiB


def test_quant_families():
    assert [cpu_speed.family(q) for q in ("Q4_K_M", "IQ2_XXS", "Q3_K_M", "Q4_0", "UD-IQ1_S")] == ["q4_k"] * 5
    assert [cpu_speed.family(q) for q in ("Q5_K_M", "Q6_K")] == ["q6_k"] * 2
    assert [cpu_speed.family(q) for q in ("Q8_0", "F16", "BF16")] == ["q8_0"] * 3


def test_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_measure(threads):
        calls.append(threads)
        return {"q4_k": 10.0, "q6_k": 12.0, "q8_0": 14.0}

    monkeypatch.setattr(cpu_speed, "measure", fake_measure)
    cache = tmp_path / "cpu-speed.json"
    assert cpu_speed.cpu_speed("Some CPU", 4, cache=cache) == {"q4_k": 10.0, "q6_k": 12.0, "q8_0": 14.0}
    assert cpu_speed.cpu_speed("Some CPU", 4, cache=cache)["q8_0"] == 14.0
    assert calls == [4]  # the second time from the cache
    cpu_speed.cpu_speed("Some CPU", 2, cache=cache)  # another thread count is measured on its own
    assert calls == [4, 2]
    for damaged in ("not json", json.dumps({"x": 1}), json.dumps([1, 2])):
        cache.write_text(damaged)
        assert cpu_speed.cpu_speed("Some CPU", 4, cache=cache)["q4_k"] == 10.0
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["q6_k"] == 12.0


def test_planner_uses_the_measured_speed_for_weights_in_ram():
    from dataclasses import replace

    from localr1.fit.candidates import from_catalog
    from localr1.fit.planner import plan_candidate
    from localr1.models.catalog import load_catalog

    c = next(
        c for c in from_catalog(load_catalog(include_user=False), include_local=False) if c.label == "r1:7b:Q4_K_M"
    )
    hw = machine(Simulation(gpu="none", ram=32 * GiB, disk=1024 * GiB))
    generic = plan_candidate(c, hw, want_ctx=8192, min_tps=0)
    slow = plan_candidate(
        c, replace(hw, cpu_decode_gbs={"q4_k": 5.0, "q6_k": 6.0, "q8_0": 7.0}), want_ctx=8192, min_tps=0
    )
    fast = plan_candidate(
        c, replace(hw, cpu_decode_gbs={"q4_k": 20.0, "q6_k": 6.0, "q8_0": 7.0}), want_ctx=8192, min_tps=0
    )
    assert fast.decode_tps == pytest.approx(4 * slow.decode_tps, rel=1e-6)  # bytes per token / measured rate
    read = 5e9 / slow.decode_tps  # bytes a token reads: the weights but the embeddings, a quarter of the KV
    assert read == pytest.approx(c.weights.total - c.weights.embd + slow.memory.kv_total / 4, rel=1e-6)
    assert generic.decode_tps != slow.decode_tps


@pytest.mark.integration
def test_the_real_kernels_are_measured():
    rates = cpu_speed.measure(1, reps=2)
    assert rates is not None and set(rates) == {"q4_k", "q6_k", "q8_0"}
    assert all(0.1 < r < 1000 for r in rates.values())
