"""What the machine has: GPUs and their memory, RAM, CPU, disk, and which llama.cpp backends are built.

Every probe degrades to "unknown" with a reason instead of failing, and every figure can be overridden to
simulate another machine (``--vram 12GiB --ram 32GiB --gpus 2``, or ``LOCALR1_HW="vram=12GiB,ram=32GiB"``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from localr1.engine.cpu_speed import cpu_speed
from localr1.engine.devices import list_devices
from localr1.engine.rpc import link_bandwidth, link_rtt, remote_name
from localr1.errors import UsageError
from localr1.machine.cpu import physical_cores
from localr1.paths import models_dir
from localr1.units import GiB

# Imported inside the functions that use them: pynvml (heavy to import, and not needed by every command).


@dataclass(frozen=True)
class KnownGPU:
    """A GPU model's published memory and bandwidth (vendor spec sheets), for detected GPUs (matched by
    name) and for simulating one (``--gpu "RTX 4090"``). Apple chips share RAM: no fixed memory."""

    name: str
    vendor: str  # nvidia | amd | apple
    memory_gib: float | None
    bandwidth_gbs: float


KNOWN_GPUS: tuple[KnownGPU, ...] = tuple(
    KnownGPU(name, vendor, mem, bw)
    for vendor, rows in (
        ("nvidia", (
            ("H200", 141, 4800), ("H100", 80, 3350), ("A100", 80, 1935), ("A100 40GB", 40, 1555),
            ("L40S", 48, 864), ("L40", 48, 864), ("L4", 24, 300), ("A6000", 48, 768), ("RTX 6000 Ada", 48, 960),
            ("A5000", 24, 768), ("A4000", 16, 448), ("V100", 32, 900), ("T4", 16, 320),
            ("RTX 5090", 32, 1792), ("RTX 5080", 16, 960), ("RTX 5070 Ti", 16, 896), ("RTX 5070", 12, 672),
            ("RTX 5060 Ti", 16, 448), ("RTX 5060", 8, 448),
            ("RTX 4090", 24, 1008), ("RTX 4080 SUPER", 16, 736), ("RTX 4080", 16, 717),
            ("RTX 4070 Ti SUPER", 16, 672), ("RTX 4070 Ti", 12, 504), ("RTX 4070 SUPER", 12, 504),
            ("RTX 4070", 12, 504), ("RTX 4060 Ti", 16, 288), ("RTX 4060", 8, 272),
            ("RTX 3090 Ti", 24, 1008), ("RTX 3090", 24, 936), ("RTX 3080 Ti", 12, 912), ("RTX 3080", 10, 760),
            ("RTX 3070 Ti", 8, 608), ("RTX 3070", 8, 448), ("RTX 3060 Ti", 8, 448), ("RTX 3060", 12, 360),
            ("RTX 2080 Ti", 11, 616), ("RTX 2080", 8, 448), ("RTX 2070", 8, 448), ("RTX 2060", 6, 336),
        )),
        ("amd", (
            ("MI300X", 192, 5300), ("MI250X", 128, 3277), ("RX 9070 XT", 16, 640), ("RX 9070", 16, 640),
            ("RX 7900 XTX", 24, 960), ("RX 7900 XT", 20, 800), ("RX 7900 GRE", 16, 576), ("RX 7800 XT", 16, 624),
            ("RX 7700 XT", 12, 432), ("RX 7600", 8, 288), ("RX 6950 XT", 16, 576), ("RX 6900 XT", 16, 512),
            ("RX 6800 XT", 16, 512), ("RX 6800", 16, 512), ("RX 6700 XT", 12, 384),
        )),
        ("apple", (  # where a chip came with two GPU sizes, the plain name is the smaller
            ("M1", None, 68), ("M1 Pro", None, 200), ("M1 Max", None, 400), ("M1 Ultra", None, 800),
            ("M2", None, 100), ("M2 Pro", None, 200), ("M2 Max", None, 400), ("M2 Ultra", None, 800),
            ("M3", None, 100), ("M3 Pro", None, 150), ("M3 Max", None, 300), ("M3 Max 30-core", None, 300),
            ("M3 Max 40-core", None, 400), ("M3 Ultra", None, 819), ("M4", None, 120), ("M4 Pro", None, 273),
            ("M4 Max", None, 410), ("M4 Max 32-core", None, 410), ("M4 Max 40-core", None, 546),
        )),
    )
    for name, mem, bw in rows
)  # fmt: skip


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


# vendors --gpu accepts, "none", and "detected": this machine's own GPUs (as probed), with --vram capping
# each one's memory (to exercise a real device, such as Vulkan on lavapipe, with a small budget)
GPU_KINDS = ("nvidia", "amd", "apple", "none", "detected")


def gpu_hint() -> str:
    return 'Use nvidia, amd, apple, none, or a model such as "RTX 4090", "RX 7900 XTX", "M2 Max" (localr1 hw --known-gpus lists them).'


def known_gpu(name: str) -> KnownGPU | None:
    """The table's entry for a GPU name ("NVIDIA GeForce RTX 4090", "rtx 3090", "Apple M2 Max", "M2 Max
    38-core"): the longest entry name found in it as whole words, or None."""
    words = _words(name)
    for gpu in sorted(KNOWN_GPUS, key=lambda g: -len(g.name)):
        if _words(gpu.name) in words:
            return gpu
    return None


# "rpc": a `localr1 worker` (typically a CPU: its RAM's bandwidth, not a GPU's)
DEFAULT_GPU_BANDWIDTH = {"nvidia": 400.0, "amd": 400.0, "apple": 100.0, "rpc": 40.0}
DEFAULT_RAM_BANDWIDTH = 40.0  # GB/s: dual-channel DDR4/DDR5 as measured by memory-bound decoding
DEFAULT_DISK_BANDWIDTH = 2.0  # GB/s: an NVMe SSD; `localr1 plan --measure-disk` measures it


@dataclass(frozen=True)
class GPU:
    name: str
    vendor: str  # nvidia | amd | apple
    total: int  # bytes the GPU may use
    free: int
    compute_capability: str | None = None
    unified: bool = False  # memory shared with the CPU (Apple Silicon)
    bandwidth_gbs: float = 0.0
    latency_s: float = 0.0  # a remote device's network round trip (llama.cpp RPC)
    link_gbs: float = 0.0  # its link's measured GB/s (plan --measure-link); 0: assumed (budget.DEFAULT_LINK_GBS)

    @property
    def remote(self) -> bool:
        """A `localr1 worker`'s device (llama.cpp RPC)."""
        return self.vendor == "rpc"

    @property
    def endpoint(self) -> str | None:
        """A worker device's host:port, from its name "RPC1[host:port]" (None for this machine's GPUs)."""
        if not self.remote or "[" not in self.name:
            return None
        return self.name[self.name.index("[") + 1 : self.name.index("]")]

    def with_bandwidth(self) -> GPU:
        if self.bandwidth_gbs:
            return self
        if (known := known_gpu(self.name)) is not None:
            return replace(self, bandwidth_gbs=known.bandwidth_gbs)
        return replace(self, bandwidth_gbs=DEFAULT_GPU_BANDWIDTH.get(self.vendor, 300.0))


@dataclass(frozen=True)
class Hardware:
    os: str
    cpu: str
    physical_cores: int
    simd: tuple[str, ...]
    ram_total: int
    ram_available: int
    gpus: tuple[GPU, ...]
    disk_free: int | None
    disk_path: str
    backends: tuple[str, ...]  # llama.cpp devices: "CPU", "CUDA0", "Metal", ...
    ram_bandwidth_gbs: float = DEFAULT_RAM_BANDWIDTH
    disk_bandwidth_gbs: float = DEFAULT_DISK_BANDWIDTH  # sequential reads, for experts streamed from disk
    notes: tuple[str, ...] = ()  # probes that failed, and why
    simulated: bool = False
    # GB/s of weights llama.cpp's CPU kernels get through per quant family (q4_k, q6_k, q8_0), measured on
    # this machine (engine/cpu_speed.py); empty: unknown, the RAM bandwidth model applies
    cpu_decode_gbs: dict = field(default_factory=dict)
    cpu_sync_us: float = 0.0  # what one graph node costs the CPU's threads beyond its arithmetic (measured)
    cpu_step_probe_s: float = 0.0  # one decode step of engine/step_probe.py's model (measured; 0: not measured)

    @property
    def has_workers(self) -> bool:
        """`localr1 worker`s take part (real or simulated): some GPUs are remote devices."""
        return any(g.remote for g in self.gpus)

    @property
    def unified(self) -> bool:
        return any(g.unified for g in self.gpus)

    @property
    def gpu_offload_built(self) -> bool:
        return any(b != "CPU" and not b.startswith("BLAS") for b in self.backends)

    def to_dict(self) -> dict:
        return asdict(self)


# --- probes ------------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float = 5.0) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * 1024
    return out


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def probe_ram(notes: list[str]) -> tuple[int, int]:
    system = platform.system()
    try:
        if system == "Linux":
            info = _meminfo()
            total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
            limit = _cgroup_limit()
            if limit is not None and limit < total:
                notes.append(f"memory limited by cgroup to {limit / GiB:.1f} GiB")
                total, available = limit, min(available, limit)
            return total, available
        if system == "Darwin":
            total = int(_run(["sysctl", "-n", "hw.memsize"]))
            vm = _run(["vm_stat"])
            page = int(re.search(r"page size of (\d+)", vm).group(1)) if "page size of" in vm else 16384
            free_pages = sum(
                int(m.group(1))
                for key in ("Pages free", "Pages inactive", "Pages purgeable")
                if (m := re.search(rf"{key}:\s+(\d+)", vm))
            )
            return total, free_pages * page
        if system == "Windows":

            class MemoryStatus(ctypes.Structure):
                _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)] + [
                    (n, ctypes.c_ulonglong) for n in ("total", "avail", "tpf", "apf", "tv", "av", "aev")
                ]

            status = MemoryStatus()
            status.length = ctypes.sizeof(status)
            ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
            return int(status.total), int(status.avail)
    except (OSError, KeyError, ValueError, subprocess.SubprocessError, AttributeError) as exc:
        notes.append(f"RAM: unknown ({exc})")
        return 0, 0
    notes.append(f"RAM: unknown (no probe for {system})")
    return 0, 0


def probe_cpu() -> tuple[str, tuple[str, ...]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            name = m.group(1).strip()
        if m := re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M):
            flags = set(m.group(2).split())
    except OSError:
        if platform.system() == "Darwin":
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                name = _run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip()
            if platform.machine() == "arm64":
                flags = {"neon", "dotprod"}
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile", "asimd", "neon", "sve", "dotprod")
    return name, tuple(f for f in wanted if f in flags)


def probe_nvidia(notes: list[str]) -> list[GPU]:
    try:
        import pynvml  # nvidia-ml-py: optional

        pynvml.nvmlInit()
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                name = pynvml.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else name
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                gpus.append(GPU(name, "nvidia", int(mem.total), int(mem.free), f"{major}.{minor}"))
            return gpus
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        pass
    except Exception as exc:  # NVML raises its own error types for missing drivers
        notes.append(f"NVML: {exc}")
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = _run(
            ["nvidia-smi", "--query-gpu=name,memory.total,memory.free,compute_cap", "--format=csv,noheader,nounits"]
        )
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"nvidia-smi failed: {exc}")
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            cc = parts[3] if len(parts) > 3 and parts[3] not in ("", "[N/A]") else None
            gpus.append(GPU(parts[0], "nvidia", int(float(parts[1])) << 20, int(float(parts[2])) << 20, cc))
    return gpus


def probe_amd(notes: list[str]) -> list[GPU]:
    gpus = []
    for card in sorted(Path("/sys/class/drm").glob("card[0-9]*")):
        dev = card / "device"
        try:
            if (dev / "vendor").read_text().strip() != "0x1002":
                continue
            total = int((dev / "mem_info_vram_total").read_text())
            used = int((dev / "mem_info_vram_used").read_text())
        except (OSError, ValueError):
            continue
        try:
            name = (dev / "product_name").read_text().strip() or "AMD GPU"
        except OSError:
            name = "AMD GPU"
        gpus.append(GPU(name, "amd", total, total - used))
    return gpus


def apple_gpu_share(ram_total: int) -> int:
    """What Metal lets the GPU use of unified memory (recommendedMaxWorkingSetSize): ~2/3 up to 36 GiB, ~3/4 above."""
    return int(ram_total * (2 / 3 if ram_total <= 36 * GiB else 3 / 4))


def probe_apple(ram_total: int, ram_available: int, notes: list[str]) -> list[GPU]:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return []
    share = apple_gpu_share(ram_total)
    try:
        wired = int(_run(["sysctl", "-n", "iogpu.wired_limit_mb"]).strip() or 0) << 20
        if wired > 0:
            share = wired
            notes.append(f"GPU memory limit set by iogpu.wired_limit_mb: {wired / GiB:.1f} GiB")
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    name = "Apple GPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        name = _run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip() or name
    return [GPU(name, "apple", share, min(share, ram_available), unified=True)]


def probe_devices(notes: list[str]) -> list:
    """llama.cpp's devices (engine.devices.Device), [] where llama.cpp cannot be loaded."""
    try:
        return list_devices()
    except Exception as exc:  # a broken install must not stop `localr1 hw`
        notes.append(f"llama.cpp backends: unknown ({exc})")
        return []


def devices_as_gpus(devices: list) -> list[GPU]:
    """GPUs that only llama.cpp lists (a Vulkan device no vendor probe knows: Intel, lavapipe, a GPU without
    its vendor's tools), with the memory llama.cpp reports for them. Remote devices are left out."""
    out = []
    for d in devices:
        if d.is_gpu and d.memory_total > 0 and not d.name.startswith("RPC"):
            vendor = "vulkan" if d.name.startswith("Vulkan") else d.name.rstrip("0123456789").lower()
            out.append(GPU(d.description or d.name, vendor, d.memory_total, d.memory_free))
    return out


def remote_gpus(devices: list) -> list[GPU]:
    """The devices of `localr1 worker`s (llama.cpp's RPC devices, "RPC0[host:port]"), as GPUs llama.cpp splits
    layers over: their memory as the worker offers it, a CPU worker's bandwidth, and the link's round trip
    (measured when the worker was added) and bandwidth (when measured), which tokens pay to cross to it."""

    out = []
    for d in devices:
        if d.name.startswith("RPC") and d.memory_total > 0:
            rtt, link = link_rtt(d.description), link_bandwidth(d.description) / 1e9
            gpu = GPU(remote_name(d), "rpc", d.memory_total, d.memory_free, latency_s=rtt, link_gbs=link)
            out.append(gpu.with_bandwidth())
    return out


def probe_disk(path: Path, notes: list[str]) -> int | None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError as exc:
        notes.append(f"disk: unknown ({exc})")
        return None


def probe_cpu_speed(cpu: str, notes: list[str]) -> dict:
    """This CPU's measured kernel speeds (cached after the first time), or {} where they cannot be measured."""
    try:
        return cpu_speed(cpu, physical_cores()) or {}
    except Exception as exc:  # noqa: BLE001 - a failed measurement only means the estimate stays generic
        notes.append(f"CPU speed: not measured ({type(exc).__name__}: {exc})")
        return {}


def probe(*, disk_path: Path | None = None, backends: bool = True) -> Hardware:

    notes: list[str] = []
    ram_total, ram_available = probe_ram(notes)
    cpu, simd = probe_cpu()
    gpus = probe_nvidia(notes) + probe_amd(notes) + probe_apple(ram_total, ram_available, notes)
    devices = probe_devices(notes) if backends else []
    if not gpus:  # no vendor tool found a GPU: llama.cpp may still drive one (Vulkan)
        gpus = devices_as_gpus(devices)
    gpus = gpus + remote_gpus(devices)
    path = disk_path or models_dir()
    hw = Hardware(
        os=f"{platform.system()} {platform.machine()}",
        cpu=cpu,
        physical_cores=physical_cores(),
        simd=simd,
        ram_total=ram_total,
        ram_available=ram_available,
        gpus=tuple(g.with_bandwidth() for g in gpus),
        disk_free=probe_disk(path, notes),
        disk_path=str(path),
        backends=tuple(d.name for d in devices),
        notes=tuple(notes),
    )
    if backends:  # llama.cpp is loaded anyway: measure (once per machine) how fast its CPU kernels run
        speed = probe_cpu_speed(cpu, notes)
        hw = replace(with_cpu_speed(hw, speed), notes=tuple(notes))
    return hw


def with_cpu_speed(hw: Hardware, measured: dict[str, float]) -> Hardware:
    """``hw`` with engine/cpu_speed.py's figures: the kernels' rates, and apart from them what a graph node
    costs and the step probe's decode step."""
    rates = dict(measured)
    sync, step = rates.pop("sync_us", 0.0), rates.pop("step_s", 0.0)
    return replace(hw, cpu_decode_gbs=rates, cpu_sync_us=sync, cpu_step_probe_s=step)


def measure_disk_read(path: Path, *, size: int = 256 << 20, chunk: int = 8 << 20) -> float:
    """Sequential read speed (GB/s) of ``path`` (a model file), bypassing what the page cache holds.

    Without a file big enough, a temporary one is written next to ``path`` first (and removed)."""

    target, made = path, None
    if not path.is_file() or path.stat().st_size < size:
        folder = path if path.is_dir() else path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, suffix=".disktest")
        with os.fdopen(fd, "wb") as fh:
            block = os.urandom(chunk)
            for _ in range(size // chunk):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        target = made = Path(name)
    try:
        fd = os.open(target, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)  # forget the cached pages
            done, start = 0, time.perf_counter()
            while done < size:
                data = os.read(fd, chunk)
                if not data:
                    break
                done += len(data)
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
    finally:
        if made is not None:
            made.unlink(missing_ok=True)
    return done / elapsed / 1e9 if elapsed > 0 else 0.0


# --- simulation ------------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*([\d.]+)\s*([KMGT]i?B?|B)?\s*$", re.I)
_UNITS = {"": GiB, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": GiB, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``12GiB``, ``12G``, ``500MB``, ``12`` (GiB) -> bytes. Decimal and binary prefixes are both read as binary."""
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"cannot read the size {text!r}", hint="Write it like 12GiB, 512MiB or 1.5TiB.")
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Simulation:
    vram: int | None = None  # per GPU
    gpus: int | None = None
    gpu: str | None = None  # nvidia | amd | apple | none
    ram: int | None = None
    disk: int | None = None
    cores: int | None = None
    gpu_bandwidth: float | None = None
    ram_bandwidth: float | None = None
    workers: int | None = None  # `localr1 worker`s (llama.cpp RPC) taking part
    worker_mem: int | None = None  # memory each offers
    extra: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return any(v is not None for k, v in asdict(self).items() if k != "extra")

    @classmethod
    def from_env(cls, text: str | None = None) -> Simulation:
        text = os.environ.get("LOCALR1_HW", "") if text is None else text
        values: dict = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key in ("vram", "ram", "disk", "worker_mem"):
                values[key] = parse_size(value)
            elif key in ("gpus", "cores", "workers"):
                values[key] = int(value)
            elif key in ("gpu_bandwidth", "ram_bandwidth"):
                values[key] = float(value)
            elif key == "gpu":
                values[key] = value.strip().lower()
            else:
                raise UsageError(
                    f"LOCALR1_HW: unknown setting {key!r}",
                    hint="Use vram, ram, gpus, gpu, disk, cores, workers, worker_mem.",
                )
        return cls(**values)

    def merged(self, other: Simulation) -> Simulation:
        out = Simulation(**{k: (v if v is not None else getattr(self, k)) for k, v in asdict(other).items()})
        if other.gpu is None and (other.vram or other.gpus) and self.gpu == "none":
            out = replace(out, gpu=None)  # asking for VRAM or GPUs brings a GPU back
        return out

    def apply(self, hw: Hardware) -> Hardware:
        if not self.active:
            return hw
        if self.gpu == "detected":  # the probed GPUs themselves, each capped at --vram
            cap = self.vram
            gpus = tuple(replace(g, total=min(g.total, cap), free=min(g.free, cap)) if cap else g for g in hw.gpus)
            rest = replace(self, gpu=None, vram=None, gpus=None)
            hw = replace(hw, gpus=gpus, simulated=True)
            return rest.apply(hw) if rest.active else hw
        ram_total = self.ram if self.ram is not None else hw.ram_total
        ram_available = self.ram if self.ram is not None else hw.ram_available
        model = known_gpu(self.gpu) if self.gpu and self.gpu not in GPU_KINDS else None
        if self.gpu and self.gpu not in GPU_KINDS and model is None:
            raise UsageError(f"unknown GPU {self.gpu!r}", hint=gpu_hint())
        kind = model.vendor if model else self.gpu
        kind = kind or (hw.gpus[0].vendor if hw.gpus else ("nvidia" if self.vram or self.gpus else "none"))
        gpus = list(hw.gpus)
        if kind == "none" or self.gpus == 0:
            gpus = []
        elif kind == "apple":
            share = self.vram if self.vram is not None else apple_gpu_share(ram_total)
            name = f"Apple {model.name} (simulated)" if model else "Apple GPU (simulated)"
            bw = model.bandwidth_gbs if model else 0.0
            gpus = [GPU(name, "apple", share, share, unified=True, bandwidth_gbs=bw).with_bandwidth()]
        elif model is not None:
            count = self.gpus if self.gpus is not None else 1
            vram = self.vram if self.vram is not None else int((model.memory_gib or 8) * GiB)
            gpus = [
                GPU(f"{model.name} (simulated)", kind, vram, vram, bandwidth_gbs=model.bandwidth_gbs)
                for _ in range(count)
            ]
        elif self.vram is not None or self.gpus is not None or self.gpu is not None:
            count = self.gpus if self.gpus is not None else max(1, len(gpus))
            vram = self.vram if self.vram is not None else (gpus[0].total if gpus else 8 * GiB)
            gpus = [GPU(f"{kind.upper()} GPU (simulated)", kind, vram, vram) for _ in range(count)]
        if self.gpu_bandwidth:
            gpus = [replace(g, bandwidth_gbs=self.gpu_bandwidth) for g in gpus]
        gpus = [g.with_bandwidth() for g in gpus]
        changed = gpus != [g.with_bandwidth() for g in hw.gpus] or self.gpu == "none"
        backends = ("CPU",) + tuple(f"{'Metal' if g.vendor == 'apple' else 'CUDA'}{i}" for i, g in enumerate(gpus))
        if self.workers:  # CPU workers on a LAN: their memory, a RAM's bandwidth, half a millisecond each way
            mem = self.worker_mem if self.worker_mem is not None else 64 * GiB
            remote = [
                GPU(f"RPC{i}[worker{i + 1}:50052] (simulated)", "rpc", mem, mem, latency_s=0.0005).with_bandwidth()
                for i in range(self.workers)
            ]
            gpus += remote
            backends += tuple(g.name for g in remote)
            changed = True
        return replace(
            hw,
            ram_total=ram_total,
            ram_available=ram_available,
            gpus=tuple(gpus),
            disk_free=self.disk if self.disk is not None else hw.disk_free,
            physical_cores=self.cores or hw.physical_cores,
            ram_bandwidth_gbs=self.ram_bandwidth or hw.ram_bandwidth_gbs,
            backends=backends if changed else hw.backends,
            simulated=True,
        )


def machine(simulation: Simulation | None = None, *, backends: bool = True) -> Hardware:
    """The hardware localr1 plans for: probed, then overridden by LOCALR1_HW and the command line."""
    sim = Simulation.from_env()
    if simulation is not None:
        sim = sim.merged(simulation)
    if sim.gpu == "detected":
        return sim.apply(probe(backends=backends))
    if sim.active:
        # a simulated machine needs no slow probes of the real GPUs
        base = Hardware(
            os=f"{platform.system()} {platform.machine()}",
            cpu="simulated",
            physical_cores=physical_cores(),
            simd=(),
            ram_total=0,
            ram_available=0,
            gpus=(),
            disk_free=None,
            disk_path="",
            backends=("CPU",),
        )
        if sim.ram is None or sim.disk is None:
            real = probe(backends=False)
            base = replace(base, ram_total=real.ram_total, ram_available=real.ram_available, disk_free=real.disk_free)
        return sim.apply(base)
    return probe(backends=backends)
