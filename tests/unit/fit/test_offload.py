"""Offload placement for the full R1 on simulated machines: hot tensors first, then experts by tier."""

from __future__ import annotations

import random
import re

import pytest

from localr1.fit.candidates import from_catalog
from localr1.fit.capacity import Budget
from localr1.fit.offload import OffloadError, expert_rule, number_pattern, plan_offload
from localr1.machine.hardware import Simulation, machine
from localr1.models.catalog import load_catalog
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
    from localr1.fit.memory import estimate
    from localr1.fit.planner import decode_speed

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


def across(vram, ram, workers, worker_mem, **kw):
    return machine(
        Simulation(vram=vram * GiB if vram else None, ram=ram * GiB, disk=4096 * GiB, workers=workers,
                   worker_mem=worker_mem * GiB, **kw)
    )  # fmt: skip


def first_rule(rules, tensor: str) -> str | None:
    """The device llama.cpp gives a tensor: the first rule whose pattern matches its name (re.search)."""
    return next((device for pattern, device in rules if re.search(pattern, tensor)), None)


@pytest.mark.parametrize(
    ("vram", "ram", "workers", "mem"), [(24, 64, 2, 128), (24, 16, 2, 64), (24, 16, 3, 48), (0, 64, 2, 128)]
)
def test_across_machines_the_layers_on_one_device_and_every_expert_layer_in_one_place(vram, ram, workers, mem):
    """The hot part and the KV cache on the main device (this machine's GPU, else a worker's), each MoE layer's
    routed experts on exactly one device or tier, within what each offers; the rules send them there."""
    from localr1.fit.capacity import device_room

    m = across(vram, ram, workers, mem)
    p = plan_offload(R1, m, 8192)
    main, *helpers = p.devices
    assert main.hot and not any(h.hot for h in helpers)
    assert p.main_device == ("local" if vram else main.ggml_name)
    moe = [i for i, x in enumerate(R1.weights.expert_layers) if x]
    placed = [i for d in p.devices for i in d.expert_layers] + list(p.ram_expert_layers + p.disk_expert_layers)
    assert sorted(placed) == moe  # each layer once
    assert sorted(p.gpu_expert_layers) == sorted(i for d in p.devices for i in d.expert_layers)
    by_name = {g.name: g for g in m.gpus}
    for d in p.devices:
        assert d.bytes <= device_room(by_name[d.device]), d
    assert p.ram_bytes <= Budget.of(m).ram
    for i in moe:
        device = first_rule(p.rules, f"blk.{i}.ffn_up_exps.weight")
        holder = next((d for d in p.devices if i in d.expert_layers), None)
        if holder is None:
            assert device == "CPU"  # RAM or disk
        elif holder.hot:
            assert device is None  # the tensor split puts the layer, experts included, on the main device
        else:
            assert device == holder.ggml_name
    assert first_rule(p.rules, "blk.5.attn_kv_a_mqa.weight") is None  # the hot part follows the layer
    if not vram:
        assert main.endpoint and p.ot_args()[p.ot_args().index("-ts") + 1].startswith("1")


def test_across_machines_ram_before_a_worker_and_a_worker_before_the_disk():
    """A worker's experts cost a network round trip per layer on top of reading them: this machine's RAM is
    filled first, then the workers, and only then the disk; more workers never make the estimate slower."""
    one = plan_offload(R1, across(24, 64, 1, 32), 8192)
    helper = one.devices[1]
    assert max(one.ram_expert_layers) < min(helper.expert_layers)  # RAM took the first layers, then the worker
    assert min(one.disk_expert_layers) > max(helper.expert_layers)  # 64 GiB here + 32 there do not hold R1
    two = plan_offload(R1, across(24, 64, 2, 32), 8192)
    assert len(two.disk_expert_layers) < len(one.disk_expert_layers) and two.decode_tps > one.decode_tps
    alone = plan_offload(R1, hw(24, 64), 8192)
    assert one.decode_tps > alone.decode_tps  # a worker's RAM beats this machine's disk


def test_across_machines_the_llama_cpp_command_names_the_workers_buffers():
    p = plan_offload(R1, across(24, 16, 2, 64), 8192)
    args = p.ot_args()
    assert args[:2] == ["--rpc", "worker1:50052,worker2:50052"]
    assert args[args.index("-ts") + 1] == "0,0,1"  # llama.cpp lists the workers' devices first
    targets = [a.rpartition("=")[2] for a in args if "exps" in a]
    assert "RPC0[worker1:50052]" in targets and "RPC0[worker2:50052]" in targets  # each worker's first device


def test_across_machines_the_forced_modes():
    with pytest.raises(OffloadError, match="devices' memory"):
        plan_offload(R1, across(24, 16, 1, 32), 8192, mode="gpu")
    ram = plan_offload(R1, across(24, 256, 2, 64), 8192, mode="ram")
    assert not ram.gpu_expert_layers and all(not d.expert_layers for d in ram.devices)
    capped = plan_offload(R1, across(24, 16, 2, 64), 8192, gpu_experts=10)
    assert len(capped.gpu_expert_layers) == 10


def test_across_machines_a_slow_link_costs_what_it_carries():
    """Each layer on a worker sends a hidden state there and back (4 x 7168 bytes for R1): on a 10 Mbit/s link
    that costs more than reading the layer's active experts from this machine's disk, so the disk comes first
    there; a measured fast link makes the estimate faster than the 1 Gbit/s assumed."""
    from dataclasses import replace as with_

    from localr1.fit.capacity import activation_bytes, round_trip_s

    m = across(24, 64, 1, 128)
    assert activation_bytes(R1.arch) == 4 * 7168
    worker = m.gpus[1]
    assert round_trip_s(worker, 28672) == pytest.approx(2 * (0.0005 + 28672 / 0.125e9))
    assert round_trip_s(m.gpus[0], 28672) == 0  # this machine's GPU
    lan = plan_offload(R1, m, 8192)
    slow = plan_offload(R1, with_(m, gpus=(m.gpus[0], with_(worker, link_gbs=0.00125))), 8192)
    fast = plan_offload(R1, with_(m, gpus=(m.gpus[0], with_(worker, link_gbs=10.0))), 8192)
    assert lan.devices[1].expert_layers and not lan.disk_expert_layers
    assert len(slow.disk_expert_layers) > 0 and slow.decode_tps < lan.decode_tps < fast.decode_tps


def test_across_machines_two_gpus_here_share_the_layers_in_the_llama_cpp_command():
    p = plan_offload(R1, across(24, 16, 2, 64, gpus=2), 8192)
    args = p.ot_args()
    assert p.devices[0].device == "this machine's GPUs" and p.local_gpus == 2
    assert args[args.index("-ts") + 1] == "0,0,1,1"
