"""Offload placement for the full R1 on simulated machines: hot tensors first, then experts by tier."""

from __future__ import annotations

import random
import re

import pytest

from localr1.candidates import from_catalog
from localr1.catalog import load_catalog
from localr1.hardware import Simulation, machine
from localr1.offload import OffloadError, expert_rule, number_pattern, plan_offload
from localr1.planner import Budget
from localr1.units import GiB

R1 = next(
    c for c in from_catalog(load_catalog(include_user=False), include_local=False) if c.label == "r1:671b:UD-IQ1_S"
)


@pytest.fixture(autouse=True)
def no_env_hw(monkeypatch):
    monkeypatch.delenv("LOCALR1_HW", raising=False)


def hw(vram, ram, **kw):
    return machine(Simulation(vram=vram * GiB, ram=ram * GiB, disk=4096 * GiB, **kw))


@pytest.mark.parametrize(("vram", "ram"), [(8, 32), (24, 64), (24, 192), (80, 256), (48, 512)])
def test_every_byte_has_a_place_and_budgets_hold(vram, ram):
    machine_ = hw(vram, ram)
    p = plan_offload(R1, machine_, 8192)
    b = Budget.of(machine_)
    moe = [i for i, x in enumerate(R1.weights.expert_layers) if x]
    assert sorted(p.gpu_expert_layers + p.ram_expert_layers + p.disk_expert_layers) == moe
    assert p.gpu_bytes <= b.gpu and p.ram_bytes <= b.ram
    assert p.gpu_bytes + p.ram_bytes + p.disk_bytes >= R1.weights.total
    assert p.mlock == (not p.disk_expert_layers and bool(p.ram_expert_layers))


def test_more_memory_moves_experts_up_the_tiers_and_speeds_up():
    small, big = plan_offload(R1, hw(24, 64), 8192), plan_offload(R1, hw(80, 256), 8192)
    assert len(big.gpu_expert_layers) > len(small.gpu_expert_layers)
    assert small.disk_expert_layers and not big.disk_expert_layers
    assert big.decode_tps > small.decode_tps


def test_rules_route_exactly_the_cpu_experts():
    p = plan_offload(R1, hw(24, 192), 8192)
    ((pattern, device),) = p.rules
    assert device == "CPU"
    cpu_layers = set(p.ram_expert_layers + p.disk_expert_layers)
    for spec in R1.arch.tensors():
        hit = re.search(pattern, spec.name) is not None
        assert hit == (spec.role == "exps" and spec.layer in cpu_layers), spec.name
    args = p.ot_args()
    assert args[:2] == ["-ngl", "999"] and args[2] == "-ot" and args[3].endswith("=CPU")


def test_modes_and_expert_count():
    assert plan_offload(R1, hw(80, 256), 8192, mode="ram").gpu_expert_layers == ()
    assert len(plan_offload(R1, hw(80, 256), 8192, gpu_experts=5).gpu_expert_layers) == 5
    with pytest.raises(OffloadError, match="do not fit in GPU"):
        plan_offload(R1, hw(24, 256), 8192, mode="gpu")
    with pytest.raises(OffloadError, match="do not fit in RAM"):
        plan_offload(R1, hw(24, 32), 8192, mode="ram")
    with pytest.raises(OffloadError, match="hot tensors"):
        plan_offload(R1, hw(2, 256), 131072)
    with pytest.raises(OffloadError, match="one of"):
        plan_offload(R1, hw(24, 256), 8192, mode="fast")
    dense = next(
        c for c in from_catalog(load_catalog(include_user=False), include_local=False) if c.label == "r1:7b:Q4_K_M"
    )
    with pytest.raises(OffloadError, match="not a mixture-of-experts"):
        plan_offload(dense, hw(24, 64), 8192)


def test_expert_rule():
    rule = expert_rule((3, 4, 10))
    assert re.search(rule, "blk.4.ffn_up_exps.weight") and re.search(rule, "blk.10.ffn_down_exps.weight")
    assert not re.search(rule, "blk.14.ffn_up_exps.weight") and not re.search(rule, "blk.4.ffn_up_shexp.weight")
    assert expert_rule(tuple(range(3, 54))) == r"^blk\.([3-9]|[1-4][0-9]|5[0-3])\.ffn_(up|down|gate|gate_up)_exps\."


def test_number_pattern_matches_exactly_its_numbers():
    rng = random.Random(7)
    sets = [{0}, {9, 10}, set(range(0, 61)), set(range(95, 205)), set(range(1000))]
    sets += [set(rng.sample(range(300), rng.randint(1, 120))) for _ in range(150)]
    sets += [set(range(a, a + rng.randint(1, 150))) for a in rng.sample(range(300), 100)]
    for numbers in sets:
        pattern = re.compile(f"(?:{number_pattern(tuple(numbers))})")
        for i in range(1000):
            assert bool(pattern.fullmatch(str(i))) == (i in numbers), (sorted(numbers), i, pattern.pattern)
        assert not pattern.fullmatch(f"0{min(numbers)}")  # no leading zeros: "blk.03" is not layer 3


def test_one_speed_model_for_every_placement():
    """Everything on the GPU estimates the same whether planned as plain layers or as an offload placement,
    and each step down the tiers (experts to RAM, then to disk) is slower, never faster."""
    from localr1.memory import estimate
    from localr1.planner import decode_speed

    big = hw(1024, 2048)
    on_gpu = plan_offload(R1, big, 8192, mode="gpu")
    plain = decode_speed(R1, estimate(R1.arch, R1.weights, 8192, -1), big, 0, -1)
    assert on_gpu.decode_tps == pytest.approx(plain, rel=1e-9)
    in_ram = plan_offload(R1, big, 8192, mode="ram")
    assert in_ram.decode_tps < on_gpu.decode_tps
    some_on_disk = plan_offload(R1, hw(24, 96), 8192, mode="auto")
    assert some_on_disk.disk_bytes > 0
    all_in_ram = plan_offload(R1, hw(24, 512), 8192, mode="ram")
    assert some_on_disk.decode_tps < all_in_ram.decode_tps < on_gpu.decode_tps
    # only the active experts count: 8 of 256 routed experts per token
    dense_share = (R1.weights.total - sum(R1.weights.expert_layers)) / R1.weights.total
    assert dense_share < 0.1 and on_gpu.decode_tps > 3 * (big.gpus[0].bandwidth_gbs * 1e9 * 0.7) / R1.weights.total
