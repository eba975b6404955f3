"""Probes degrade to 'unknown' with a reason; simulation overrides every figure."""

from __future__ import annotations

import os
import stat

import pytest

from localr1.errors import UsageError
from localr1.machine import cpu, hardware
from localr1.machine.hardware import Simulation, parse_size
from localr1.units import GiB


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    def make(script: str):
        path = tmp_path / "nvidia-smi"
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # force the nvidia-smi fallback
    return make


def test_nvidia_smi_fallback(fake_smi):
    fake_smi('echo "NVIDIA GeForce RTX 4090, 24564, 23000, 8.9"\necho "NVIDIA GeForce RTX 3060, 12288, 12000, [N/A]"\n')
    notes: list[str] = []
    gpus = hardware.probe_nvidia(notes)
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3060"]
    assert gpus[0].total == 24564 << 20 and gpus[0].free == 23000 << 20 and gpus[0].compute_capability == "8.9"
    assert gpus[1].compute_capability is None
    assert gpus[0].with_bandwidth().bandwidth_gbs == 1008
    assert notes == []


def test_nvidia_smi_failure_is_a_note(fake_smi):
    fake_smi("echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    notes: list[str] = []
    assert hardware.probe_nvidia(notes) == []
    assert notes and "nvidia-smi failed" in notes[0]


def test_ram_probe_failure_is_a_note(monkeypatch):
    monkeypatch.setattr(hardware.platform, "system", lambda: "Linux")

    def broken():
        raise OSError("no /proc")

    monkeypatch.setattr(hardware, "_meminfo", broken)
    notes: list[str] = []
    assert hardware.probe_ram(notes) == (0, 0)
    assert notes == ["RAM: unknown (no /proc)"]


def test_real_probe_never_raises():
    hw = hardware.probe(backends=True)
    assert hw.ram_total > 0 and hw.physical_cores >= 1
    assert "CPU" in hw.backends


def test_parse_size():
    assert parse_size("12GiB") == 12 * GiB
    assert parse_size("12G") == 12 * GiB
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1.5TiB") == int(1.5 * (1 << 40))
    assert parse_size("16") == 16 * GiB
    with pytest.raises(UsageError):
        parse_size("lots")


def test_simulation_from_env():
    sim = Simulation.from_env("vram=8GiB, gpus=2, ram=32GiB, gpu=nvidia, disk=1TiB, cores=8")
    hw = hardware.machine(sim)
    assert len(hw.gpus) == 2 and hw.gpus[0].total == 8 * GiB and hw.ram_total == 32 * GiB
    assert hw.physical_cores == 8 and hw.simulated
    with pytest.raises(UsageError, match="unknown setting 'vrm'"):
        Simulation.from_env("vrm=8GiB")


def test_cli_vram_overrides_env_without_gpu(monkeypatch):
    monkeypatch.setenv("LOCALR1_HW", "gpu=none,ram=16GiB")
    hw = hardware.machine(Simulation(vram=12 * GiB))
    assert len(hw.gpus) == 1 and hw.gpus[0].vendor == "nvidia" and hw.ram_total == 16 * GiB


def test_apple_share():
    assert hardware.apple_gpu_share(16 * GiB) == int(16 * GiB * 2 / 3)
    assert hardware.apple_gpu_share(64 * GiB) == 48 * GiB


def test_measure_disk_read(tmp_path):
    speed = hardware.measure_disk_read(tmp_path, size=8 << 20, chunk=1 << 20)
    assert speed > 0
    assert not list(tmp_path.glob("*.disktest"))  # the scratch file is gone
    model = tmp_path / "m.gguf"
    model.write_bytes(os.urandom(4 << 20))
    assert hardware.measure_disk_read(model, size=4 << 20, chunk=1 << 20) > 0


@pytest.fixture
def fresh_cores():
    cpu.physical_cores.cache_clear()
    yield
    cpu.physical_cores.cache_clear()


def test_physical_cores_on_linux_are_within_the_allowed_cpus(fresh_cores):
    assert 1 <= cpu.physical_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("system", "logical", "sysctl", "expected"),
    [
        ("Darwin", 12, {"hw.perflevel0.physicalcpu": "8"}, 8),  # M2 Pro: 8 performance + 4 efficiency
        ("Darwin", 8, {"hw.physicalcpu": "8"}, 8),  # Intel Mac, older macOS: no perflevels
        ("Windows", 16, {}, 8),  # 8 cores with SMT
        ("Windows", 4, {}, 4),
    ],
)
def test_physical_cores_elsewhere(fresh_cores, monkeypatch, system, logical, sysctl, expected):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: logical)
    monkeypatch.setattr(cpu.platform, "system", lambda: system)

    def run(cmd, timeout=5.0):
        if cmd[:2] != ["sysctl", "-n"] or cmd[2] not in sysctl:
            raise cpu.subprocess.CalledProcessError(1, cmd)
        return sysctl[cmd[2]] + "\n"

    monkeypatch.setattr(cpu, "_run", run)
    assert cpu.physical_cores() == expected


@pytest.mark.parametrize(
    ("name", "known", "bandwidth"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 1008),
        ("NVIDIA GeForce RTX 4070 Ti SUPER", "RTX 4070 Ti SUPER", 672),  # not the RTX 4070's figure
        ("NVIDIA GeForce RTX 4070", "RTX 4070", 504),
        ("rtx 3090", "RTX 3090", 936),
        ("AMD Radeon RX 7900 XTX", "RX 7900 XTX", 960),
        ("Apple M2 Max", "M2 Max", 400),
        ("M4 Max 40-core", "M4 Max 40-core", 546),
        ("Apple M1", "M1", 68),
        ("NVIDIA H100 80GB HBM3", "H100", 3350),
        ("NVIDIA L4", "L4", 300),
    ],
)
def test_gpus_are_known_by_name(name, known, bandwidth):
    gpu = hardware.known_gpu(name)
    assert gpu is not None and gpu.name == known and gpu.bandwidth_gbs == bandwidth
    vendor = gpu.vendor
    assert hardware.GPU(name, vendor, 1, 1).with_bandwidth().bandwidth_gbs == bandwidth


def test_unknown_gpu_names():
    assert hardware.known_gpu("NVIDIA GeForce GTX 1050") is None
    assert hardware.known_gpu("SuperL40SX") is None  # whole words only
    assert hardware.GPU("Mystery GPU", "amd", 1, 1).with_bandwidth().bandwidth_gbs == 400


def test_simulating_a_gpu_by_name(monkeypatch):
    monkeypatch.delenv("LOCALR1_HW", raising=False)
    hw = hardware.machine(hardware.Simulation(gpu="RTX 3090", gpus=2, ram=64 * GiB, disk=GiB))
    assert [(g.name, g.vendor, g.total, g.bandwidth_gbs) for g in hw.gpus] == [
        ("RTX 3090 (simulated)", "nvidia", 24 * GiB, 936)
    ] * 2
    mac = hardware.machine(hardware.Simulation(gpu="m2 max 38-core", ram=64 * GiB, disk=GiB))
    (gpu,) = mac.gpus
    assert gpu.unified and gpu.vendor == "apple" and gpu.bandwidth_gbs == 400
    assert gpu.total == hardware.apple_gpu_share(64 * GiB)
    smaller = hardware.machine(hardware.Simulation(gpu="RTX 4090", vram=12 * GiB, disk=GiB, ram=32 * GiB))
    assert smaller.gpus[0].total == 12 * GiB and smaller.gpus[0].bandwidth_gbs == 1008  # --vram still wins
    monkeypatch.setenv("LOCALR1_HW", "gpu=RX 7900 XTX,ram=32GiB")
    assert hardware.machine().gpus[0].name == "RX 7900 XTX (simulated)"
    with pytest.raises(hardware.UsageError, match="unknown GPU"):
        hardware.machine(hardware.Simulation(gpu="RTX 9999", ram=GiB))
