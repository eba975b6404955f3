"""The planner on simulated machines: never over budget, never worse with more memory, honest about why."""

from __future__ import annotations

import pytest

from localr1.errors import ModelTooBigError
from localr1.fit.candidates import from_catalog
from localr1.fit.capacity import Budget
from localr1.fit.memory import WeightLayout, estimate
from localr1.fit.planner import MIN_CTX, Fallbacks, NoPlanError, choose, ctx_ladder, plan_candidate
from localr1.machine.hardware import Simulation, machine
from localr1.models.catalog import load_catalog
from localr1.units import GiB

CATALOG = load_catalog(include_user=False)
CANDIDATES = from_catalog(CATALOG, include_local=False)

MACHINES = {
    "laptop-8g-cpu": Simulation(gpu="none", ram=8 * GiB, disk=256 * GiB),
    "desktop-32g-cpu": Simulation(gpu="none", ram=32 * GiB, disk=1024 * GiB),
    "apple-16g": Simulation(gpu="M2", ram=16 * GiB, disk=512 * GiB),
    "apple-64g": Simulation(gpu="M2 Max", ram=64 * GiB, disk=1024 * GiB),
    "apple-192g": Simulation(gpu="M2 Ultra", ram=192 * GiB, disk=2048 * GiB),
    "nvidia-8g-16g": Simulation(vram=8 * GiB, ram=16 * GiB, disk=1024 * GiB),
    "nvidia-12g-32g": Simulation(vram=12 * GiB, ram=32 * GiB, disk=1024 * GiB),
    "nvidia-24g-64g": Simulation(vram=24 * GiB, ram=64 * GiB, disk=2048 * GiB),
    "nvidia-2x24g-64g": Simulation(vram=24 * GiB, gpus=2, ram=64 * GiB, disk=2048 * GiB),
    "nvidia-80g-256g": Simulation(vram=80 * GiB, ram=256 * GiB, disk=4096 * GiB),
}
# Within one kind of machine, each is at least as big as the one before.
LADDERS = [
    ["laptop-8g-cpu", "desktop-32g-cpu"],
    ["apple-16g", "apple-64g", "apple-192g"],
    ["nvidia-8g-16g", "nvidia-12g-32g", "nvidia-24g-64g", "nvidia-2x24g-64g", "nvidia-80g-256g"],
]


@pytest.fixture(autouse=True)
def no_env_hw(monkeypatch):
    monkeypatch.delenv("LOCALR1_HW", raising=False)


def plan_for(name, **kw):
    return choose(CANDIDATES, machine(MACHINES[name]), **kw)


@pytest.mark.parametrize("name", list(MACHINES))
def test_every_machine_gets_a_plan_within_budget(name):
    plan = plan_for(name)
    budget = plan.budget
    m = plan.memory
    if budget.unified:
        assert m.gpu_total + m.cpu_total <= budget.gpu or plan.mode == "offload"
    else:
        assert m.gpu_total <= budget.gpu
        assert m.cpu_total <= budget.ram or plan.mode == "offload"
    assert plan.n_ctx >= MIN_CTX
    assert plan.decode_tps >= 5.0
    assert plan.attempts[-1].ok and plan.attempts[-1].label == plan.label
    assert all(not a.ok for a in plan.attempts[:-1])


@pytest.mark.parametrize("ladder", LADDERS)
def test_larger_budgets_never_pick_worse(ladder):
    plans = [plan_for(name) for name in ladder]
    for smaller, larger in zip(plans, plans[1:]):
        assert larger.candidate.quality >= smaller.candidate.quality
        if larger.candidate == smaller.candidate:
            assert larger.n_ctx >= smaller.n_ctx


def test_budgets_keep_a_margin():
    hw = machine(MACHINES["nvidia-12g-32g"])
    b = Budget.of(hw)
    assert 10 * GiB < b.gpu < 12 * GiB * 0.95
    assert 26 * GiB < b.ram < 32 * GiB * 0.9
    apple = Budget.of(machine(MACHINES["apple-64g"]))
    assert apple.unified and apple.gpu <= apple.ram


@pytest.mark.parametrize("name", list(MACHINES))
def test_671b_only_where_memory_and_disk_allow(name):
    hw = machine(MACHINES[name])
    budget = Budget.of(hw)
    full = [c for c in CANDIDATES if c.arch.is_moe]
    smallest = min(c.weights.total for c in full)
    experts = {c.label: sum(c.weights.expert_layers) for c in full}
    try:
        plan = choose(full, hw, min_tps=0.0)
    except NoPlanError:
        plan = None
    room = budget.gpu + budget.ram
    if plan is None:
        # refused: either the disk cannot hold it, or memory cannot hold what must stay resident
        assert hw.disk_free < smallest or all(c.weights.total - experts[c.label] > room for c in full)
    else:
        assert hw.disk_free >= plan.candidate.weights.total
        non_expert = plan.candidate.weights.total - experts[plan.label]
        assert non_expert <= room


def test_671b_is_offered_on_big_machines_and_not_on_laptops():
    # a 192 GB Mac holds R1's 140 GB IQ1_S (not R1-0528's 185 GB one); R1-0528-Qwen3-8B at Q8_0 ranks above it
    r1 = [c for c in CANDIDATES if c.label == "r1:671b:UD-IQ1_S"]
    assert plan_candidate(r1[0], machine(MACHINES["apple-192g"])) is not None
    r1_0528 = [c for c in CANDIDATES if c.label == "r1-0528:671b:UD-IQ1_S"]
    assert plan_candidate(r1_0528[0], machine(MACHINES["apple-192g"]), allow_disk=False) is None
    assert plan_for("nvidia-80g-256g").candidate.arch.is_moe
    with pytest.raises(NoPlanError) as exc:  # memory-mapped from disk it would run, but far too slowly
        choose([c for c in CANDIDATES if c.arch.is_moe], machine(MACHINES["laptop-8g-cpu"]))
    assert all("tokens/s" in a.reason or "needs" in a.reason for a in exc.value.attempts)


def test_full_offload_first_then_partial():
    c = next(c for c in CANDIDATES if c.label == "r1:14b:Q4_K_M")
    big = plan_candidate(c, machine(MACHINES["nvidia-24g-64g"]))
    assert big.mode == "gpu" and big.n_gpu_layers == -1
    small = plan_candidate(c, machine(MACHINES["nvidia-8g-16g"]), min_tps=0.0)
    assert small.mode == "partial" and 0 < small.n_gpu_layers < c.arch.n_layer
    assert small.memory.gpu_total <= small.budget.gpu
    # one more layer on the GPU would not fit
    more = estimate(c.arch, c.weights, small.n_ctx, small.n_gpu_layers + 1)
    assert more.gpu_total > small.budget.gpu


def test_context_is_the_largest_that_fits_up_to_the_request():
    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M")
    hw = machine(MACHINES["nvidia-8g-16g"])
    assert plan_candidate(c, hw, want_ctx=4096, min_tps=0).n_ctx == 4096  # what was asked for, no more
    plan = plan_candidate(c, hw, want_ctx=131072, min_tps=0, gpu_layers=-1)
    assert plan.n_ctx < 131072 and "context reduced" in plan.notes[0]
    assert estimate(c.arch, c.weights, plan.n_ctx * 2, -1).gpu_total > plan.budget.gpu


def test_parallel_slots_get_each_their_context_in_the_kv_cache():
    """serve --parallel N: the KV cache holds N contexts; the plan's n_ctx stays per request."""
    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M")
    hw = machine(MACHINES["nvidia-24g-64g"])
    one = plan_candidate(c, hw, want_ctx=8192, min_tps=0, keep_ctx=True)
    four = plan_candidate(c, hw, want_ctx=8192, min_tps=0, keep_ctx=True, slots=4)
    assert (one.n_ctx, one.slots, four.n_ctx, four.slots) == (8192, 1, 8192, 4)
    assert four.memory.kv_total == estimate(c.arch, c.weights, 4 * 8192, four.n_gpu_layers).kv_total
    assert four.memory.kv_total == 4 * one.memory.kv_total
    # where four contexts do not fit, a default context shrinks per request, as it does for one
    small = machine(MACHINES["nvidia-8g-16g"])
    shrunk = plan_candidate(c, small, want_ctx=32768, min_tps=0, gpu_layers=-1, slots=4)
    assert shrunk.slots == 4 and shrunk.n_ctx < 32768
    kv = shrunk.kv_type
    assert estimate(c.arch, c.weights, 4 * shrunk.n_ctx, -1, kv_type=kv).gpu_total <= shrunk.budget.gpu


def test_a_q8_0_kv_cache_where_f16_does_not_fit():
    """The planner keeps the KV cache in q8_0 (half of f16) before it gives up GPU layers or context."""
    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q8_0")
    hw = machine(MACHINES["nvidia-8g-16g"])
    auto = plan_candidate(c, hw, want_ctx=32768, min_tps=0, keep_ctx=True)
    assert auto.kv_type == "q8_0" and any("q8_0" in n for n in auto.notes)
    assert auto.memory.kv_total == estimate(c.arch, c.weights, 32768, auto.n_gpu_layers, kv_type="q8_0").kv_total
    forced = plan_candidate(c, hw, want_ctx=32768, min_tps=0, keep_ctx=True, kv_type="f16")
    assert forced.kv_type == "f16" and forced.n_gpu_layers < auto.n_gpu_layers  # fewer layers fit beside f16
    q4 = plan_candidate(c, hw, want_ctx=32768, min_tps=0, keep_ctx=True, kv_type="q4_0")
    assert q4.kv_type == "q4_0" and q4.memory.kv_total < auto.memory.kv_total
    roomy = plan_candidate(c, machine(MACHINES["nvidia-80g-256g"]), want_ctx=32768, min_tps=0)
    assert roomy.kv_type == "f16"  # f16 whenever it fits
    assert roomy.to_dict()["kv_type"] == "f16"


def test_ctx_ladder():
    assert ctx_ladder(16384, 131072) == [16384, 8192]
    assert ctx_ladder(65536, 131072, keep=True) == [65536]  # a context the user set
    assert ctx_ladder(65536, 32768, keep=True) == [32768]  # no more than the model knows
    assert ctx_ladder(65536, 32768) == [32768, 16384, 8192]
    assert ctx_ladder(2048, 4096) == [2048]
    assert ctx_ladder(12000, 131072) == [12000, 8192]


def test_gpu_beats_cpu_on_speed():
    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M")
    gpu = plan_candidate(c, machine(MACHINES["nvidia-24g-64g"]))
    cpu = plan_candidate(c, machine(MACHINES["desktop-32g-cpu"]), min_tps=0)
    assert gpu.decode_tps > 3 * cpu.decode_tps


def test_nothing_fits_says_why():
    with pytest.raises(NoPlanError) as exc:
        choose(CANDIDATES, machine(Simulation(gpu="none", ram=2 * GiB, disk=100 * GiB)))
    assert any("RAM needs" in a.reason for a in exc.value.attempts)


def test_fallbacks_shrink_gpu_layers_then_context():
    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M")
    plan = plan_candidate(c, machine(MACHINES["nvidia-24g-64g"]))
    fb = Fallbacks(plan)
    steps = []
    while (step := fb.next()) is not None:
        steps.append(step)
    layers = [s[1] for s in steps]
    assert layers[0] < c.arch.n_layer + 1 and layers == sorted(layers, reverse=True) and 0 in layers
    assert steps[-1] == (MIN_CTX, 0)


def test_estimated_weights_track_bits_per_weight():
    arch = CATALOG["r1:7b"].arch
    q4, q8 = WeightLayout.from_arch(arch, "Q4_K_M").total, WeightLayout.from_arch(arch, "Q8_0").total
    assert 4.2 * GiB < q4 < 4.5 * GiB  # the real Q4_K_M file: 4.36 GiB of tensors
    assert q8 > 1.6 * q4


def test_a_context_the_user_set_is_kept_and_a_default_one_may_shrink():
    from localr1.config import Config
    from localr1.fit.request import LoadRequest
    from localr1.loader import plan_for

    def plan_for_spec(spec, hw, config, *, want_ctx, gpu_layers, prefer_local):
        return plan_for(LoadRequest(spec, ctx=want_ctx, gpu_layers=gpu_layers), hw, config, prefer_local=prefer_local)

    hw = machine(MACHINES["nvidia-8g-16g"])
    kept = plan_for_spec("r1:7b", hw, Config(), want_ctx=131072, gpu_layers=None, prefer_local=False)
    assert kept.n_ctx == 131072 and not any("context reduced" in n for n in kept.notes)
    configured = plan_for_spec("r1:7b", hw, Config(ctx=131072), want_ctx=None, gpu_layers=None, prefer_local=False)
    assert configured.n_ctx == 131072
    capped = plan_for_spec("r1:7b", hw, Config(), want_ctx=1 << 20, gpu_layers=None, prefer_local=False)
    assert capped.n_ctx == 131072 and "context capped at 131072 tokens" in capped.notes[0]
    with pytest.raises(ModelTooBigError, match="with a 131,072-token context: RAM needs"):
        plan_for_spec("r1:70b", hw, Config(), want_ctx=131072, gpu_layers=None, prefer_local=False)
    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M")
    default = plan_candidate(c, hw, want_ctx=131072, min_tps=0, gpu_layers=-1)  # what a caller left open
    assert default.n_ctx < 131072


def test_context_reduced_for_speed_says_so():
    """Offloaded experts compete with the KV cache for the GPU: a smaller context leaves room for more experts
    there, which can be what makes a plan fast enough, and the note must not claim the larger one did not fit."""
    hw = machine(Simulation(vram=21 * GiB, ram=256 * GiB, disk=2048 * GiB))
    c = next(c for c in CANDIDATES if c.label == "r1:671b:UD-IQ1_M")
    at16 = plan_candidate(c, hw, want_ctx=16384, keep_ctx=True, min_tps=0, kv_type="f16")
    at8 = plan_candidate(c, hw, want_ctx=8192, keep_ctx=True, min_tps=0, kv_type="f16")
    assert len(at8.placement.gpu_expert_layers) > len(at16.placement.gpu_expert_layers)
    assert at8.decode_tps > at16.decode_tps
    threshold = (at8.decode_tps + at16.decode_tps) / 2
    attempts = []
    plan = plan_candidate(c, hw, want_ctx=16384, attempts=attempts, kv_type="f16", min_tps=threshold)
    assert plan.n_ctx == 8192 and plan.mode == "offload"
    slow = next(a for a in attempts if a.n_ctx == 16384 and "tokens/s" in a.reason)
    assert slow.reason.startswith("offload fits, but about ")
    assert plan.notes[0].startswith("context reduced to 8192 tokens for speed: 16384 would run at about ")
    kept = plan_candidate(c, hw, want_ctx=16384, keep_ctx=True, kv_type="f16", min_tps=threshold)
    assert kept is None  # kept: too slow is too slow
    # left to choose the cache type, the planner keeps the context and halves the KV cache instead
    auto = plan_candidate(c, hw, want_ctx=16384, min_tps=threshold)
    assert (auto.n_ctx, auto.kv_type, auto.mode) == (16384, "q8_0", "offload") and auto.decode_tps >= threshold


def test_catalog_fits_gives_every_model_its_plan_or_its_best_slow_speed():
    """What `models` lists and the chat's picker offers, computed below the CLI: a plan, or why none (too
    slow: with the best speed reached, carried as a number, not parsed back out of a message)."""
    from dataclasses import replace

    from localr1.fit.candidates import catalog_fits
    from localr1.models.catalog import load_catalog

    catalog = load_catalog(include_user=False)
    roomy = machine(Simulation(gpus=0, ram=64 * GiB, disk=8 << 40))
    fits = {f.model.name: f for f in catalog_fits(catalog, roomy)}
    assert set(fits) == set(catalog)
    assert fits["r1:1.5b"].plan is not None and fits["r1:1.5b"].best_slow_tps is None
    crawling = replace(roomy, ram_bandwidth_gbs=0.05)
    slow = {f.model.name: f for f in catalog_fits(catalog, crawling)}
    assert slow["r1:1.5b"].plan is None and 0 < slow["r1:1.5b"].best_slow_tps < 5


def test_the_full_r1_across_a_gpu_box_and_two_ram_boxes():
    """A 24 GB GPU here and two `localr1 worker`s offering 128 GiB each (simulated): the planner places every
    tensor (the devices' shares and this machine's RAM add up to the model), within each device's memory, and
    the estimate pays for the slow workers and the link."""
    from localr1.fit.planner import device_shares

    sim = Simulation(gpu="rtx 4090", ram=64 * GiB, disk=2048 * GiB, workers=2, worker_mem=128 * GiB)
    hw = machine(sim)
    assert [g.vendor for g in hw.gpus] == ["nvidia", "rpc", "rpc"] and hw.gpus[1].latency_s > 0
    full = [c for c in CANDIDATES if c.arch.is_moe]
    plan = choose(full, hw, min_tps=0.0)
    m = plan.memory
    assert m.gpu_weights + m.cpu_weights == plan.candidate.weights.total  # every weight is somewhere
    shares = device_shares(hw.gpus, m.gpu_total)
    assert sum(b for _, b in shares) == m.gpu_total
    for (name, share), gpu in zip(shares, hw.gpus, strict=True):
        assert share <= gpu.total, name
    alone = choose(full, machine(Simulation(gpu="rtx 4090", ram=64 * GiB, disk=2048 * GiB)), min_tps=0.0)
    assert plan.memory.gpu_total > alone.memory.gpu_total  # the workers hold what the GPU box alone cannot
    # the workers' 40 GB/s and round trips: far below what the GPU alone reads per second
    assert plan.decode_tps < 1008 * 0.61 * 1e9 / (plan.candidate.weights.total * 37 / 671)
    # the layers stay on the GPU here, the routed experts go to RAM and the workers: faster than llama.cpp's
    # own split, which would put two thirds of every layer's hot part on the slow workers
    from localr1.fit.memory import estimate
    from localr1.fit.planner import decode_speed

    assert plan.mode == "offload" and plan.placement.main_device == "local"
    whole = estimate(plan.candidate.arch, plan.candidate.weights, plan.n_ctx, -1, kv_type=plan.kv_type)
    assert plan.decode_tps > 1.2 * decode_speed(plan.candidate, whole, hw, 0, -1)


def test_a_dense_model_across_workers_is_faster_on_a_faster_link_at_the_same_round_trip():
    """What `plan --measure-link` relies on, held exact: with the round trip fixed, a worker's measured link
    faster than the 1 Gbit/s assumed never lowers the estimate (tests/vulkan measures a real link, but two
    plans each measure their own round trip, so their estimates differ by noise and are not compared there)."""
    from dataclasses import replace as with_

    sim = Simulation(gpu="none", ram=8 * GiB, disk=512 * GiB, workers=2, worker_mem=16 * GiB)
    hw = machine(sim)
    dense = [c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M"]
    assumed = choose(dense, hw, min_tps=0.0)
    assert assumed.n_gpu_layers != 0  # layers on the workers, so the link matters
    fast = with_(hw, gpus=tuple(with_(g, link_gbs=1.5) for g in hw.gpus))
    slow = with_(hw, gpus=tuple(with_(g, link_gbs=0.01) for g in hw.gpus))
    measured = choose(dense, fast, min_tps=0.0)
    assert measured.n_gpu_layers == assumed.n_gpu_layers
    assert choose(dense, slow, min_tps=0.0).decode_tps <= assumed.decode_tps <= measured.decode_tps


def test_a_kv_type_the_head_size_refuses_is_an_attempt_not_a_crash():
    """plan_candidate appended to its attempts before it had a list (AttributeError on None)."""
    from dataclasses import replace as with_

    c = next(c for c in CANDIDATES if c.label == "r1:7b:Q4_K_M")
    odd = with_(c, arch=with_(c.arch, head_dim=80))  # 80 is not a multiple of q8_0's 32-value blocks
    hw = machine(MACHINES["desktop-32g-cpu"])
    assert plan_candidate(odd, hw, kv_type="q8_0") is None
    attempts: list = []
    assert plan_candidate(odd, hw, kv_type="q8_0", attempts=attempts) is None
    assert "does not allow a q8_0 KV cache" in attempts[0].reason


def test_planner_options_are_one_typed_value():
    from localr1.fit.planner import PlanOptions

    hw = machine(MACHINES["desktop-32g-cpu"])
    options = PlanOptions(want_ctx=4096, min_tps=0.0)
    assert choose(CANDIDATES, hw, options) == choose(CANDIDATES, hw, want_ctx=4096, min_tps=0.0)
    with pytest.raises(TypeError):
        choose(CANDIDATES, hw, options, want_context=4096)  # a misspelt option is an error, not ignored
