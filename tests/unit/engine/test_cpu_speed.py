"""The CPU's measured kernel speed: cached per CPU, threads and llama.cpp version, and used by the planner."""

from __future__ import annotations

import json

import pytest

from localr1.engine import cpu_speed
from localr1.machine.hardware import Simulation, machine
from localr1.units import GiB

RATES = {"q4_k": 10.0, "q6_k": 12.0, "q8_0": 14.0, "f16": 16.0, "attn": 9.0, "sync_us": 2.0, "step_s": 0.02}


def test_quant_families():
    assert [cpu_speed.family(q) for q in ("Q4_K_M", "IQ2_XXS", "Q3_K_M", "Q4_0", "UD-IQ1_S")] == ["q4_k"] * 5
    assert [cpu_speed.family(q) for q in ("Q5_K_M", "Q6_K")] == ["q6_k"] * 2
    assert cpu_speed.family("Q8_0") == "q8_0"
    assert [cpu_speed.family(q) for q in ("F16", "BF16", "F32")] == ["f16"] * 3


def test_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_measure(threads):  # (a probe that could not run leaves step_s 0, which is kept)
        calls.append(threads)
        return dict(RATES)

    monkeypatch.setattr(cpu_speed, "measure", fake_measure)
    cache = tmp_path / "cpu-speed.json"
    assert cpu_speed.cpu_speed("Some CPU", 4, cache=cache) == RATES
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
    from localr1.fit.capacity import DEFAULT_STEP_SHARE, NODES_PER_LAYER
    from localr1.fit.planner import plan_candidate
    from localr1.models.catalog import load_catalog

    c = next(
        c for c in from_catalog(load_catalog(include_user=False), include_local=False) if c.label == "r1:7b:Q4_K_M"
    )
    hw = machine(Simulation(gpu="none", ram=32 * GiB, disk=1024 * GiB))
    generic = plan_candidate(c, hw, want_ctx=8192, min_tps=0)
    rates = {"q4_k": 5.0, "q6_k": 6.0, "q8_0": 7.0, "f16": 8.0, "attn": 4.5}
    slow = plan_candidate(c, replace(hw, cpu_decode_gbs=rates, cpu_sync_us=3.0), want_ctx=8192, min_tps=0)
    fast = plan_candidate(
        c, replace(hw, cpu_decode_gbs={k: 4 * v for k, v in rates.items()}, cpu_sync_us=0.75), want_ctx=8192, min_tps=0
    )
    assert fast.decode_tps == pytest.approx(4 * slow.decode_tps, rel=1e-6)
    # a token's time: each tensor type's bytes at its own kernel's speed (a Q4_K_M file holds Q6_K and F32
    # tensors too), a quarter of the KV cache at flash attention's measured rate once per query head (7 share
    # a KV head),
    # and the graph nodes' hand-offs, over the share of the kernels' speed a whole step keeps (here not
    # measured: the default)
    mix = dict(c.weights.mix)
    assert set(mix) == {"Q4_K", "Q6_K", "F32"} and sum(mix.values()) == c.weights.total - c.weights.embd
    weights_s = (mix["Q4_K"] / 5.0 + mix["Q6_K"] / 6.0 + mix["F32"] / 8.0) / 1e9
    kv_s = slow.memory.kv_total / 4 * (c.arch.n_head // c.arch.n_head_kv) / 4.5e9
    sync_s = c.arch.n_layer * NODES_PER_LAYER * 3.0e-6
    assert 1 / slow.decode_tps == pytest.approx((weights_s + kv_s + sync_s) / DEFAULT_STEP_SHARE, rel=1e-9)
    assert generic.decode_tps != slow.decode_tps
    # a cache of measurements from before flash attention had its own probe: the f16 kernel's rate
    old = {k: v for k, v in rates.items() if k != "attn"}
    older = plan_candidate(c, replace(hw, cpu_decode_gbs=old, cpu_sync_us=3.0), want_ctx=8192, min_tps=0)
    kv_f16 = slow.memory.kv_total / 4 * (c.arch.n_head // c.arch.n_head_kv) / 8e9
    assert 1 / older.decode_tps == pytest.approx((weights_s + kv_f16 + sync_s) / DEFAULT_STEP_SHARE, rel=1e-9)


def test_the_step_share_is_the_probe_models_estimate_over_its_measured_step():
    from dataclasses import replace

    from localr1.engine.step_probe import PROBE, step_read
    from localr1.fit.capacity import DEFAULT_STEP_SHARE, NODES_PER_LAYER, step_share

    hw = machine(Simulation(gpu="none", ram=32 * GiB, disk=1024 * GiB))
    rates = {"q4_k": 5.0, "q6_k": 6.0, "q8_0": 7.0, "f16": 8.0}
    read = step_read()  # the probe's Q4_K_M types: Q4_K, Q6_K (attn_v, ffn_down, output) and F32 norms
    assert set(read) == {"Q4_K", "Q6_K", "F32"}
    kernels = (read["Q4_K"] / 5.0 + read["Q6_K"] / 6.0 + read["F32"] / 8.0) / 1e9
    kernels += PROBE.n_layer * NODES_PER_LAYER * 2.0e-6
    measured = replace(hw, cpu_decode_gbs=rates, cpu_sync_us=2.0, cpu_step_probe_s=kernels / 0.8)
    assert step_share(measured) == pytest.approx(0.8, rel=1e-12)
    assert step_share(replace(measured, cpu_step_probe_s=0.0)) == DEFAULT_STEP_SHARE  # not measured
    assert step_share(replace(measured, cpu_step_probe_s=kernels / 0.05)) == DEFAULT_STEP_SHARE  # implausible
    assert step_share(replace(measured, cpu_decode_gbs={})) == DEFAULT_STEP_SHARE


def test_a_machine_whose_whole_step_is_slower_plans_slower_in_proportion():
    from dataclasses import replace

    from localr1.fit.candidates import from_catalog
    from localr1.fit.capacity import step_share
    from localr1.fit.planner import plan_candidate
    from localr1.models.catalog import load_catalog

    c = next(
        c for c in from_catalog(load_catalog(include_user=False), include_local=False) if c.label == "r1:1.5b:Q4_K_M"
    )
    base = machine(Simulation(gpu="none", ram=32 * GiB, disk=1024 * GiB))
    rates = {"q4_k": 20.0, "q6_k": 24.0, "q8_0": 28.0, "f16": 30.0}
    hw = replace(base, cpu_decode_gbs=rates, cpu_sync_us=0.5, cpu_step_probe_s=0.03)
    slower = replace(hw, cpu_step_probe_s=0.036)  # the same kernels; a whole step took 20% longer
    assert 0.2 < step_share(slower) < step_share(hw) < 2.5
    a, b = (plan_candidate(c, h, want_ctx=4096, min_tps=0).decode_tps for h in (hw, slower))
    assert a / b == pytest.approx(1.2, rel=1e-9)


@pytest.mark.integration
def test_the_real_kernels_are_measured():
    rates = cpu_speed.measure(1, reps=2)
    assert rates is not None and set(rates) == {"q4_k", "q6_k", "q8_0", "f16", "attn", "sync_us", "step_s"}
    assert all(0.1 < r < 1000 for k, r in rates.items() if k not in ("sync_us", "step_s"))
    assert 0 < rates["sync_us"] < 1000
    assert 0 < rates["step_s"] < 10  # one decode step of the probe model, through llama.cpp
