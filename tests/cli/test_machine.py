"""``localr1 hw``, ``models`` and ``plan`` on simulated machines, and ``ask`` following the plan."""

from __future__ import annotations

import json

import pytest
from ggufs import write_gguf

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine
from localr1.errors import ModelLoadError, OutOfMemoryError

SIM = ["--vram", "12GiB", "--ram", "32GiB", "--disk", "2TiB"]


def test_hw_simulated(runner):
    result = runner.invoke(app, ["hw", *SIM, "--gpus", "2"])
    assert result.exit_code == 0
    assert result.stdout.count("NVIDIA GPU (simulated): 12.0 GiB VRAM") == 2
    assert "32.0 GiB total" in result.stdout and "(simulated)" in result.stdout


def test_hw_json_and_env(runner, monkeypatch):
    monkeypatch.setenv("LOCALR1_HW", "gpu=apple,ram=64GiB,disk=1TiB")
    data = json.loads(runner.invoke(app, ["hw", "--json"]).stdout)
    assert data["simulated"] and data["ram_total"] == 64 << 30
    assert data["gpus"][0]["unified"] and data["gpus"][0]["total"] == int((64 << 30) * 3 / 4)


def test_hw_real_machine_does_not_crash(runner, monkeypatch):
    monkeypatch.delenv("LOCALR1_HW")
    result = runner.invoke(app, ["hw"])
    assert result.exit_code == 0 and "RAM" in result.stdout and "llama.cpp" in result.stdout


def test_hw_measure_times_the_cpu_again_instead_of_reading_the_cache(runner, monkeypatch):
    from localr1.engine import cpu_speed

    monkeypatch.delenv("LOCALR1_HW")
    calls = []

    def fake_measure(threads):
        calls.append(threads)
        rates = {"q4_k": 10.0 + len(calls), "q6_k": 12.0, "q8_0": 14.0, "f16": 16.0, "attn": 9.0}
        return {**rates, "sync_us": 1.0, "step_s": 0.1}

    monkeypatch.setattr(cpu_speed, "measure", fake_measure)
    first = runner.invoke(app, ["hw"])
    again = runner.invoke(app, ["hw"])
    measured = runner.invoke(app, ["hw", "--measure"])
    assert first.exit_code == again.exit_code == measured.exit_code == 0, measured.output
    assert len(calls) == 2  # the plain second run read the cache
    assert "Q4_K 11.0" in first.stdout and "Q4_K 11.0" in again.stdout and "Q4_K 12.0" in measured.stdout
    assert "(measured: one decode step of a probe model)" in measured.stdout


def test_models_marks_what_fits(runner):
    result = runner.invoke(app, ["models", *SIM])
    assert result.exit_code == 0
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "fits on GPU" in rows["r1:7b"]
    assert "partial offload" in rows["r1:14b"] or "fits on GPU" in rows["r1:14b"]
    assert "too" in rows["r1:70b"]
    data = json.loads(runner.invoke(app, ["models", "--json", *SIM]).stdout)
    assert {m["name"] for m in data} >= {"r1:1.5b", "r1:671b"}
    assert all(m["downloaded"] == [] for m in data)


def test_plan_explains(runner):
    result = runner.invoke(app, ["plan", *SIM, "--explain"])
    assert result.exit_code == 0
    assert "What was tried" in result.stdout and "✗ r1-0528:671b" in result.stdout
    assert "not downloaded yet" in result.stdout
    data = json.loads(runner.invoke(app, ["plan", *SIM, "--json"]).stdout)
    assert data["memory_bytes"]["gpu"] <= data["budget_bytes"]["gpu"]
    assert data["hardware"]["simulated"]


def test_plan_for_a_named_model(runner):
    data = json.loads(runner.invoke(app, ["plan", "r1:14b", "--vram", "8GiB", "--ram", "32GiB", "--json"]).stdout)
    assert data["model"] == "r1:14b" and data["mode"] == "partial"
    result = runner.invoke(app, ["plan", "r1:70b", "--gpu", "none", "--ram", "8GiB"])
    assert result.exit_code == 1 and "r1:70b does not fit this machine" in result.stderr
    result = runner.invoke(app, ["plan", "--gpu", "none", "--ram", "1GiB"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: no R1 model fits this machine: RAM needs")


def test_plan_bad_simulation_flags(runner):
    for args, message in (
        (["--vram", "lots"], "cannot read the size"),
        (["--gpu", "tpu"], "neither a vendor nor a GPU"),
    ):
        result = runner.invoke(app, ["plan", *args])
        assert result.exit_code == 2 and message in result.stderr


def test_ask_uses_the_plan_for_a_local_file(runner, monkeypatch, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch="llama")
    seen = []
    eng = FakeEngine([["</think>", "ok"]])

    def fake_load(p, header, options, cancel=None):
        seen.append(options)
        return eng

    monkeypatch.setattr(loader_module, "load_engine", fake_load)
    result = runner.invoke(app, ["ask", "q", "-m", str(path)])
    assert result.exit_code == 0, result.output
    assert seen[0].n_ctx == 2048 and seen[0].n_gpu_layers == 0  # its trained context; no GPU here


def test_ask_retries_smaller_after_out_of_memory(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALR1_HW", "vram=24GiB,ram=64GiB,disk=1TiB")
    path = write_gguf(tmp_path / "m.gguf", arch="llama")
    seen = []

    def fake_load(p, header, options, cancel=None):
        seen.append(options)
        if len(seen) == 1:
            raise OutOfMemoryError("llama.cpp could not load m.gguf: cudaMalloc failed: out of memory")
        return FakeEngine([["</think>", "fine"]])

    monkeypatch.setattr(loader_module, "load_engine", fake_load)
    result = runner.invoke(app, ["ask", "q", "-m", str(path)])
    assert result.exit_code == 0, result.output
    assert seen[0].n_gpu_layers == -1 and 0 <= seen[1].n_gpu_layers < 2
    assert "Out of memory with a 2,048-token context and all layers on the GPU; retrying with" in result.stderr
    assert result.stdout == "fine\n"


def test_ask_does_not_retry_other_load_errors(runner, monkeypatch, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch="llama")

    def fake_load(p, header, options, cancel=None):
        raise ModelLoadError("llama.cpp could not load m.gguf: unknown model architecture")

    monkeypatch.setattr(loader_module, "load_engine", fake_load)
    result = runner.invoke(app, ["ask", "q", "-m", str(path)])
    assert result.exit_code == 1 and "retrying" not in result.stderr


def test_gpu_without_gpu_backend_names_the_fix():
    from localr1.cli.machine import hardware_lines
    from localr1.machine.hardware import GPU, Hardware

    hw = Hardware(
        os="Linux x86_64",
        cpu="x",
        physical_cores=8,
        simd=(),
        ram_total=32 << 30,
        ram_available=30 << 30,
        gpus=(GPU("NVIDIA GeForce RTX 4090", "nvidia", 24 << 30, 23 << 30, "8.9").with_bandwidth(),),
        disk_free=1 << 40,
        disk_path="/models",
        backends=("CPU",),
    )
    text = "\n".join(hardware_lines(hw))
    assert "built for the CPU only" in text and "localr1 backend install cuda" in text
    from dataclasses import replace

    assert "CPU only" not in "\n".join(hardware_lines(replace(hw, backends=("CPU", "CUDA0"))))


def test_plan_shows_the_moe_placement_and_llama_cpp_rules(runner):
    args = ["plan", "r1:671b", "--vram", "24GiB", "--ram", "192GiB", "--disk", "2TiB"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Offload placement (auto, this plan):" in result.stdout and "experts of layers" in result.stdout
    assert "(fits" not in result.stdout.splitlines()[0] and "offload" in result.stdout.splitlines()[0]
    assert "llama-cli -m MODEL.gguf -ngl 999 -ot" in result.stdout and "=CPU" in result.stdout
    data = json.loads(runner.invoke(app, [*args, "--json", "--gpu-experts", "2"]).stdout)
    assert len(data["offload"]["gpu_expert_layers"]) == 2 and "-ot" in data["offload"]["llama_cpp_args"]
    assert runner.invoke(app, [*args, "--offload", "warp"]).exit_code == 2
    assert "Offload placement" not in runner.invoke(app, [*args, "--offload", "off"]).stdout
    assert "Offload placement" not in runner.invoke(app, ["plan", "r1:7b", *SIM]).stdout


@pytest.mark.parametrize(
    "machine_args",
    [["--vram", "24GiB", "--ram", "64GiB", "--disk", "2TiB"], ["--gpus", "0", "--ram", "64GiB", "--disk", "2TiB"]],
    ids=["gpu", "cpu"],
)
def test_plan_never_shows_more_ram_in_use_than_usable(runner, machine_args):
    """Experts left memory-mapped on disk are not RAM in use: they get a line of their own (#19's display bug,
    'RAM 102.6 GiB of 56.1 GiB usable')."""
    import re

    result = runner.invoke(app, ["plan", "r1:671b", *machine_args])
    assert result.exit_code == 0, result.output
    used, usable = map(float, re.search(r"RAM\s+([\d.]+) GiB of ([\d.]+) GiB usable", result.stdout).groups())
    assert used <= usable
    assert re.search(r"disk\s+[\d.]+ GiB of weights memory-mapped", result.stdout)


def test_plan_for_a_gpu_by_name(runner):
    result = runner.invoke(app, ["plan", "r1-0528:8b:Q8_0", "--gpu", "RTX 4090", "--ram", "64GiB", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["hardware"]["gpus"][0]["bandwidth_gbs"] == 1008 and plan["mode"] == "gpu"
    generic = json.loads(runner.invoke(app, ["plan", "r1-0528:8b:Q8_0", "--vram", "24GiB", "--json"]).stdout)
    assert plan["decode_tokens_per_s"] > 2 * generic["decode_tokens_per_s"]  # 1008 GB/s, not a generic 400
    bad = runner.invoke(app, ["plan", "--gpu", "RTX 9999"])
    assert bad.exit_code == 2 and "--known-gpus" in bad.stderr
    listing = runner.invoke(app, ["hw", "--known-gpus"])
    assert "RTX 4090" in listing.stdout and "1008 GB/s" in listing.stdout and "M2 Max" in listing.stdout


def test_plan_across_machines_shows_each_devices_share_and_the_llama_cpp_command(runner, monkeypatch):
    """The full R1 on a 24 GB GPU box with two simulated workers: the layers stay on the GPU, the experts go
    to RAM and the workers (table, JSON, and the llama-cli line with --rpc, -ts and per-worker -ot rules)."""
    monkeypatch.setenv("LOCALR1_HW", "vram=24GiB,ram=16GiB,disk=2TiB,workers=2,worker_mem=64GiB")
    result = runner.invoke(app, ["plan", "r1:671b"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "experts across machines" in out and "the layers on one device, routed experts spread by tier" in out
    assert "--rpc worker1:50052,worker2:50052" in out and "-ts 0,0,1" in out and "=RPC0[worker2:50052]'" in out
    data = json.loads(runner.invoke(app, ["plan", "r1:671b", "--json"]).stdout)
    devices = data["offload"]["devices"]
    assert data["offload"]["main_device"] == "local" and devices[0]["hot"]
    assert [d["endpoint"] for d in devices] == [None, "worker1:50052", "worker2:50052"]
    machines = {m["device"]: m["bytes"] for m in data["machines"]}
    assert all(machines[d["device"]] == d["bytes"] for d in devices)  # one source for both tables


def test_measure_link_without_workers_is_a_usage_error(runner):
    result = runner.invoke(app, ["plan", "--measure-link"])
    assert result.exit_code == 2 and "there are none" in result.stderr and "--workers" in result.stderr


@pytest.mark.parametrize("command", ["ask", "chat", "serve", "eval", "bench", "plan"])
def test_every_command_that_opens_a_model_takes_dash_m(runner, command):
    """llama.cpp users type -m by habit: every command that opens a model takes it beside the argument."""
    from localr1.cli.app import app

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert "-m" in result.stdout and "--model" in result.stdout


def test_dash_m_names_the_same_model_as_the_argument(runner, monkeypatch):
    from localr1.cli.app import app

    monkeypatch.setenv("LOCALR1_HW", "gpu=none,ram=64GiB,disk=1TiB")
    by_argument = runner.invoke(app, ["plan", "r1:7b", "--json"])
    by_option = runner.invoke(app, ["plan", "-m", "r1:7b", "--json"])
    assert by_argument.exit_code == by_option.exit_code == 0 and by_argument.stdout == by_option.stdout
    both = runner.invoke(app, ["plan", "r1:7b", "-m", "r1:8b"])
    assert both.exit_code == 2 and "two models named" in both.stderr


def test_plan_says_where_the_catalogs_draft_model_would_go(runner):
    data = json.loads(runner.invoke(app, ["plan", "r1:14b", "--vram", "24GiB", "--ram", "64GiB", "--json"]).stdout)
    draft = data["draft"]
    assert draft["model"] == "r1:1.5b:Q4_K_M" and draft["device"] == "GPU" and draft["used_by_auto"]
    assert data["memory_bytes"]["gpu"] + draft["bytes"] <= data["budget_bytes"]["gpu"]
    text = runner.invoke(app, ["plan", "r1:14b", "--gpu", "none", "--ram", "12GiB"]).stdout
    assert "Draft model r1:1.5b:Q4_K_M: left out" in text or "in RAM (used with --speculate draft)" in text
    assert "draft" not in json.loads(runner.invoke(app, ["plan", "r1:1.5b", "--gpu", "none", "--json"]).stdout)
