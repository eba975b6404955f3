"""ggml's RPC backend through ctypes: a worker serving this machine's devices to other machines, and remote
workers added as llama.cpp devices on the machine that runs the model.

Nothing here is a protocol of localr1's: ``ggml_backend_rpc_start_server`` serves, ``ggml_backend_rpc_add_server``
+ ``ggml_backend_register`` make a worker's devices ("RPC0[host:port]") appear beside the local ones, and
llama.cpp places layers on them like on any GPU. The RPC protocol has no authentication or encryption.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localr1 import limits
from localr1.engine.cpu_speed import _InitParams
from localr1.engine.devices import ggml_base_library, ggml_library, list_devices
from localr1.errors import BackendBuildError, EngineError, UsageError, WorkerError

CONNECT_TIMEOUT_S = 3.0
LINK_TIMEOUT_S = 20.0  # a worker link silent this long is dead (LOCALR1_WORKER_TIMEOUT)
N_DEVICE_FNS = 15  # function pointers in struct ggml_backend_device_i (ggml-backend-impl.h), then reg, context
_GET_MEMORY = 2  # its third: get_memory(dev, size_t *free, size_t *total)


def rpc_reg() -> Any:
    """The RPC backend's registry entry, or a one-line error naming the build that has it."""

    lib = ggml_library()
    lib.ggml_backend_reg_by_name.argtypes, lib.ggml_backend_reg_by_name.restype = [ctypes.c_char_p], ctypes.c_void_p
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise BackendBuildError(
            "this llama.cpp has no RPC backend (it was built without -DGGML_RPC=on)",
            hint="Rebuild it with RPC: localr1 backend install cpu --rpc (or cuda/vulkan/metal --rpc).",
        )
    return reg


def _proc(name: str, restype: Any, argtypes: list) -> Any:

    lib = ggml_library()
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    address = lib.ggml_backend_reg_get_proc_address(rpc_reg(), name.encode())
    if not address:
        raise BackendBuildError(
            f"this llama.cpp's RPC backend has no {name}", hint="Rebuild it: localr1 backend install cpu --rpc."
        )
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"worker {text!r} is not host:port", hint="Write workers like 192.168.1.20:50052.")
    return host.strip("[]"), int(port)


_RTT: dict[str, float] = {}


def link_rtt(endpoint: str) -> float:
    """The round trip to a worker measured when it was added (seconds; 0 if never measured)."""
    return _RTT.get(endpoint, 0.0)


# ggml's RPC greeting (ggml-rpc.cpp in the vendored llama.cpp): the command byte, the request's size as a
# little-endian uint64 and the request (the connection capabilities, none here); the reply is its size and
# the server's protocol version, a padding byte and its capabilities. ggml itself aborts the process on any
# other answer, so localr1 greets first.
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24
RPC_PROTO_MAJOR, RPC_PROTO_MINOR = 7, 0  # ggml-rpc.h of the llama.cpp llama-cpp-python builds
_HELLO_REPLY = 4 + RPC_CONN_CAPS_SIZE
_NOT_A_WORKER_HINT = "Check the address: it must be a `localr1 worker` (or llama.cpp's rpc-server)."


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> float:
    """A TCP connect first, bounded in time (ggml's own connect waits for the system's timeout); the
    fastest of three connects is the link's round trip, for the speed estimate. Then ggml's greeting,
    bounded too: anything that is not a compatible worker is one line (ggml would abort the process)."""
    host, port = parse_endpoint(endpoint)
    best = float("inf")
    try:
        for _ in range(3):
            started = time.perf_counter()
            with socket.create_connection((host, port), timeout=timeout):
                best = min(best, time.perf_counter() - started)
    except OSError as exc:
        raise WorkerError(
            f"cannot reach the worker at {endpoint}: {exc.strerror or exc}",
            hint="Start it there with `localr1 worker`, check the address, or the SSH tunnel (docs/guide.md).",
        ) from None
    greet(endpoint, timeout)
    _RTT[endpoint] = best
    return best


def greet(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[int, int, int]:
    """Speak ggml's RPC greeting to ``endpoint`` within ``timeout`` seconds in all: the worker's protocol
    version, or a WorkerError saying what answered (nothing, something that is not a worker, another version)."""
    host, port = parse_endpoint(endpoint)
    request = bytes([RPC_CMD_HELLO]) + struct.pack("<Q", RPC_CONN_CAPS_SIZE) + bytes(RPC_CONN_CAPS_SIZE)
    deadline = time.monotonic() + timeout
    reply = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            while len(reply) < 8 + _HELLO_REPLY:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(8 + _HELLO_REPLY - len(reply))
                if not chunk:
                    break
                reply += chunk
                if len(reply) >= 8 and struct.unpack("<Q", reply[:8])[0] != _HELLO_REPLY:
                    break  # not the size of a greeting's reply
    except TimeoutError:
        what = "accepted the connection but did not answer" if not reply else "answered too slowly"
        raise WorkerError(
            f"{endpoint} is not a worker: it {what} within {timeout:g} s", hint=_NOT_A_WORKER_HINT
        ) from None
    except OSError as exc:
        if not reply:
            raise WorkerError(f"{endpoint} closed the connection at ggml's greeting: {exc.strerror or exc}",
                              hint=_NOT_A_WORKER_HINT) from None  # fmt: skip
    if len(reply) < 8 + _HELLO_REPLY or struct.unpack("<Q", reply[:8])[0] != _HELLO_REPLY:
        what = "closed the connection without a word" if not reply else "answered, but not as a worker does"
        raise WorkerError(f"{endpoint} is not a worker: it {what}", hint=_NOT_A_WORKER_HINT)
    major, minor, patch = reply[8], reply[9], reply[10]
    if major != RPC_PROTO_MAJOR or minor > RPC_PROTO_MINOR:
        raise WorkerError(
            f"the worker at {endpoint} speaks RPC protocol {major}.{minor}.{patch}; this llama.cpp speaks "
            f"{RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR}",
            hint="Run the same localr1 and llama-cpp-python version on both machines.",
        )
    return major, minor, patch


LINK_PROBE_BYTES = 8 << 20  # under ggml's 10 MiB threshold for its tensor cache: the bytes really cross
_LINK: dict[str, float] = {}


def link_bandwidth(endpoint: str) -> float:
    """The link's measured bytes/s to a worker (``measure_link``), 0 if never measured."""
    return _LINK.get(endpoint, 0.0)


def measure_link(device) -> float:
    """Time a short transfer to a worker's device and back through ggml itself (a buffer on the worker, one
    8 MiB tensor written and read twice, fresh random bytes each time so no cache can answer): the link's
    bytes/s, the slower direction, kept for the speed estimate. ``device``: engine.devices.Device."""

    base, lib = ggml_base_library(), ggml_library()
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    base.ggml_init.argtypes, base.ggml_init.restype = [_InitParams], vp
    base.ggml_new_tensor_1d.argtypes, base.ggml_new_tensor_1d.restype = [vp, ctypes.c_int, ctypes.c_int64], vp
    base.ggml_free.argtypes, base.ggml_free.restype = [vp], None
    base.ggml_backend_buft_alloc_buffer.argtypes, base.ggml_backend_buft_alloc_buffer.restype = [vp, sz], vp
    base.ggml_backend_buffer_get_base.argtypes, base.ggml_backend_buffer_get_base.restype = [vp], vp
    base.ggml_backend_buffer_free.argtypes, base.ggml_backend_buffer_free.restype = [vp], None
    base.ggml_backend_tensor_alloc.argtypes, base.ggml_backend_tensor_alloc.restype = [vp, vp, vp], ctypes.c_int
    for fn in (base.ggml_backend_tensor_set, base.ggml_backend_tensor_get):
        fn.argtypes, fn.restype = [vp, vp, sz, sz], None
    endpoint = device.description
    buffer = base.ggml_backend_buft_alloc_buffer(lib.ggml_backend_dev_buffer_type(device.handle), LINK_PROBE_BYTES)
    if not buffer:
        raise EngineError(f"the worker at {endpoint} has no {LINK_PROBE_BYTES >> 20} MiB to measure the link with")
    ctx = base.ggml_init(_InitParams(1 << 16, None, True))  # tensor headers only: the data lives on the worker
    try:
        tensor = base.ggml_new_tensor_1d(ctx, 0, LINK_PROBE_BYTES // 4)  # f32
        if base.ggml_backend_tensor_alloc(buffer, tensor, base.ggml_backend_buffer_get_base(buffer)) != 0:
            raise EngineError(f"could not place a tensor on the worker at {endpoint}")
        data = ctypes.create_string_buffer(LINK_PROBE_BYTES)
        small = ctypes.create_string_buffer(4)
        best_up = best_down = float("inf")
        for _ in range(2):
            ctypes.memmove(data, os.urandom(LINK_PROBE_BYTES), LINK_PROBE_BYTES)
            started = time.perf_counter()
            base.ggml_backend_tensor_get(tensor, small, 0, 4)  # a round trip: what the transfers are beyond
            rtt = time.perf_counter() - started
            started = time.perf_counter()
            base.ggml_backend_tensor_set(tensor, data, 0, LINK_PROBE_BYTES)
            base.ggml_backend_tensor_get(tensor, small, 0, 4)  # the write has landed once this answers
            best_up = min(best_up, time.perf_counter() - started - rtt)
            started = time.perf_counter()
            base.ggml_backend_tensor_get(tensor, data, 0, LINK_PROBE_BYTES)
            best_down = min(best_down, time.perf_counter() - started - rtt)
    finally:
        base.ggml_free(ctx)
        base.ggml_backend_buffer_free(buffer)
    rate = LINK_PROBE_BYTES / max(best_up, best_down, 1e-6)
    _LINK[endpoint] = rate
    return rate


def measure_links(endpoints: list[str]) -> dict[str, float]:
    """``measure_link`` for each worker (through its first device): bytes/s by endpoint."""

    out: dict[str, float] = {}
    for d in list_devices():
        if d.name.startswith("RPC") and d.description in endpoints and d.description not in out:
            out[d.description] = measure_link(d)
    return out


@dataclass(frozen=True)
class RemoteDevice:
    endpoint: str
    name: str  # "RPC0[127.0.0.1:50052]" (see remote_name)
    description: str
    memory_free: int
    memory_total: int


def add_workers(endpoints: list[str]) -> list[RemoteDevice]:
    """Register each worker's devices with llama.cpp (once per endpoint and process) and return them."""

    link_timeout()  # a bad LOCALR1_WORKER_TIMEOUT fails before anything loads
    lib = ggml_library()
    lib.ggml_backend_register.argtypes, lib.ggml_backend_register.restype = [ctypes.c_void_p], None
    add_server = _proc("ggml_backend_rpc_add_server", ctypes.c_void_p, [ctypes.c_char_p])
    known = {d.description for d in list_devices() if d.name.startswith("RPC")}  # a worker's: its endpoint
    for endpoint in endpoints:
        parse_endpoint(endpoint)
        if endpoint in known:
            continue
        check_reachable(endpoint)
        reg = add_server(endpoint.encode())
        if not reg:
            raise EngineError(f"llama.cpp could not add the worker at {endpoint}", hint="Run with --debug for its log.")
        lib.ggml_backend_register(reg)
    install_abort_handler()  # after the RPC libraries are loaded: every copy of ggml-base gets it
    return [
        RemoteDevice(d.description, remote_name(d), d.description, d.memory_free, d.memory_total)
        for d in list_devices()
        if d.name.startswith("RPC") and d.description in endpoints
    ]


def remote_name(device) -> str:
    """A worker's device as localr1 names it: "RPC0[host:port]" (llama.cpp calls each worker's first device
    "RPC0" and puts the endpoint in its description; its buffers are named this way too)."""
    return f"{device.name}[{device.description}]"


_FN_GET_MEMORY = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
_caps: list = []  # the callbacks stay alive as long as the process serves


def cap_device_memory(handle: int, cap: int) -> None:
    """Make a device report at most ``cap`` bytes (``localr1 worker --mem``): its ggml_backend_device's
    get_memory is replaced, in this process, by one that calls the original and caps it. (The RPC server asks
    the device of the backend it made, which is the device itself, not a copy: so the change is in place. A
    worker process serves and does nothing else.)"""
    words = (ctypes.c_void_p * (N_DEVICE_FNS + 2)).from_address(handle)
    real = _FN_GET_MEMORY(words[_GET_MEMORY])

    def get_memory(dev, free, total):
        real(dev, free, total)
        free[0], total[0] = min(free[0], cap), min(total[0], cap)

    callback = _FN_GET_MEMORY(get_memory)
    _caps.append((callback, real))
    words[_GET_MEMORY] = ctypes.cast(callback, ctypes.c_void_p).value


def serve_devices(endpoint: str, devices: list, *, cache_dir: Path | None, threads: int, mem: int | None) -> None:
    """Serve ``devices`` (engine.devices.Device) at ``endpoint``: blocks for as long as the worker runs."""
    start = _proc(
        "ggml_backend_rpc_start_server",
        None,
        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)],
    )
    if mem:
        for d in devices:
            cap_device_memory(d.handle, mem)
    handles = [d.handle for d in devices]
    array = (ctypes.c_void_p * len(handles))(*handles)
    cache = str(cache_dir).encode() if cache_dir is not None else None
    start(endpoint.encode(), cache, threads, len(handles), array)


def choose_devices(kind: str) -> list:
    """The local devices a worker serves: cpu, gpu (every non-CPU device) or all."""

    devices = [d for d in list_devices() if not d.name.startswith("RPC")]
    gpus = [d for d in devices if d.is_gpu]
    cpus = [d for d in devices if d.kind == "cpu"]
    chosen = {"cpu": cpus, "gpu": gpus, "all": gpus + cpus}[kind]
    if not chosen:
        raise UsageError(f"this machine has no {kind.upper()} device for llama.cpp", hint="Use --device cpu.")
    return chosen


_ABORT_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_abort_handler: Any = None
_last_words: list = []  # callables run before a lost worker ends the process (chat: save, restore the terminal)
_report_fd = [2]


def at_worker_loss(fn) -> None:
    """Run ``fn()`` when a lost worker is about to end the process (llama.cpp cannot go on): what must not be
    lost with it. Runs on llama.cpp's thread while the rest of the process waits; errors in it are ignored."""
    _last_words.append(fn)


def report_losses_to(fd: int) -> None:
    """Where ``on_worker_loss`` writes its line (standard error until a last word, the terminal restorer of
    chat, silences that for the full-screen app's own writer and hands over the terminal)."""
    _report_fd[0] = fd


def on_worker_loss(message: bytes | None) -> None:
    """ggml's abort, when a worker vanished mid-generation: llama.cpp cannot go on (it aborts the process), so
    run the last words (chat saves the reply so far and gives the terminal back), say what happened in one
    line, not a core dump, and exit non-zero. Written straight to file descriptor 2: a full-screen app may
    have replaced sys.stderr, and nothing here may raise (the process would abort after all)."""

    try:
        text = (message or b"").decode("utf-8", "replace")
        for fn in _last_words:
            with contextlib.suppress(Exception):
                fn()
        if "RPC" in text:
            said = (
                "\nError: a worker stopped answering mid-generation (llama.cpp RPC); this reply is lost.\n"
                "Hint: check the worker machine and `localr1 worker` there, then ask again (its tensor cache makes "
                "the reload quick), or leave it out of --workers.\n"
            )
        else:
            said = f"\nError: llama.cpp stopped: {text}\nHint: run again with --debug, and report it.\n"
        with contextlib.suppress(Exception):
            os.write(_report_fd[0], said.encode("utf-8", "replace"))
    finally:
        os._exit(3)


def _ggml_base_copies() -> list[Any]:
    """Every loaded copy of libggml-base. A wheel cannot hold symlinks, so libggml-base.so and .so.0 are two
    files, and a process can load both (llama-cpp-python opens one by name, the other backends' libraries
    link the other): each has its own abort callback."""

    copies = [ggml_base_library()]
    maps = Path("/proc/self/maps")
    if maps.exists():
        loaded = {line.split()[-1] for line in maps.read_text().splitlines() if "libggml-base" in line}
        for path in sorted(loaded - {copies[0]._name}):
            copies.append(ctypes.CDLL(path))  # already loaded: dlopen hands back that copy
    return copies


def install_abort_handler() -> None:
    """Route ggml's aborts through on_worker_loss (once per process; only when workers take part)."""
    global _abort_handler
    if _abort_handler is None:
        _abort_handler = _ABORT_FN(on_worker_loss)
    for lib in _ggml_base_copies():
        lib.ggml_set_abort_callback.argtypes, lib.ggml_set_abort_callback.restype = [_ABORT_FN], ctypes.c_void_p
        lib.ggml_set_abort_callback(_abort_handler)


def link_timeout() -> float:
    """Seconds after which a silent link to or from a worker counts as lost: LOCALR1_WORKER_TIMEOUT, else 20."""
    return limits.seconds_from_env("LOCALR1_WORKER_TIMEOUT", LINK_TIMEOUT_S, 2, 3600)


def _socket_fds() -> list[int]:
    """This process's open sockets (file descriptors)."""
    folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    fds = []
    for name in os.listdir(folder):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                fds.append(int(name))
        except (OSError, ValueError):
            continue  # closed since the listing (the listing's own descriptor among them)
    return fds


def _keepalive(sock: socket.socket, timeout: float) -> None:
    """TCP keepalive probes after timeout/4 of silence, and the kernel's own deadline for unacknowledged data:
    a peer that vanished (cable, Wi-Fi, power, a firewall dropping the flow) is noticed within ``timeout``
    seconds instead of never. An idle but live peer answers the probes from its kernel: no false alarms."""
    idle = max(1, int(timeout / 4))
    interval = max(1, int(timeout / 8))
    count = max(1, round((timeout - idle) / interval))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", count), ("TCP_USER_TIMEOUT", int(timeout * 1000))):  # fmt: skip
        option = getattr(socket, name, None)  # TCP_KEEPALIVE is macOS's TCP_KEEPIDLE; USER_TIMEOUT is Linux's
        if option is not None:
            with contextlib.suppress(OSError):  # a system that lacks one keeps its default
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def guard_links(*, peers: set[tuple[str, int]] = frozenset(), local_port: int | None = None) -> int:
    """Bound every open TCP connection of this process to ``peers`` (client side: the workers) or accepted on
    ``local_port`` (a worker: its clients) by :func:`_keepalive`. ggml's RPC sockets have no timeout of their
    own, so a silently dropped link would block a recv forever: with this, the recv fails, ggml aborts, and
    the abort handler says so in one line (a client), or the worker drops that client and accepts the next.
    Returns how many connections were guarded."""
    timeout = link_timeout()
    guarded = 0
    for fd in _socket_fds():
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            peer, here = sock.getpeername()[:2], sock.getsockname()[:2]
            if (peer[0], peer[1]) in peers or (local_port is not None and here[1] == local_port):
                _keepalive(sock, timeout)
                guarded += 1
        except OSError:
            continue  # not connected (a listening socket), or gone
        finally:
            sock.close()  # the duplicate only: ggml's descriptor stays open
    return guarded


def worker_peers(endpoints: list[str]) -> set[tuple[str, int]]:
    """The addresses the workers' connections go to (each host resolved as ggml resolves it)."""
    out: set[tuple[str, int]] = set()
    for endpoint in endpoints:
        host, port = parse_endpoint(endpoint)
        try:
            for *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                out.add((address[0], address[1]))
        except OSError:
            continue
    return out
