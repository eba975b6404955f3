"""``localr1 worker``: lend this machine's devices to a localr1 on another machine (ggml's RPC backend)."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
import threading
import time

import typer

from localr1.cli.helptext import command_help
from localr1.cli.state import command, handle_errors

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

HELP = """Lend this machine's CPU or GPU to localr1 on another machine, through llama.cpp's RPC backend.

The machine that runs the model adds workers with --workers host:port (ask, chat, serve, plan, eval) and
places layers on them.

llama.cpp's RPC protocol has no authentication and no encryption: a worker listens on 127.0.0.1 unless
--host says otherwise, and then refuses to start without --allow-network.

Across machines, keep it on 127.0.0.1 and reach it through SSH: on the machine that runs the model,
ssh -N -L 50052:127.0.0.1:50052 user@worker-host, then --workers 127.0.0.1:50052.

A worker serves one client at a time. A client whose network goes silent is dropped after 20 seconds
without an answer (LOCALR1_WORKER_TIMEOUT, in seconds; the client side gives up on a silent worker the same
way), so the worker is free for the next one.

Examples:
$ localr1 worker
$ localr1 worker --device gpu --port 50053
$ localr1 worker --mem 16GiB                  # offer at most 16 GiB of this device's memory
$ localr1 worker --host 192.168.1.20 --allow-network   # a network that is yours alone
"""

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_worker_bind(host: str, port: int, *, allow_network: bool) -> None:
    from localr1.errors import UsageError

    if not 0 < port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, not {port}")
    if not is_loopback(host) and not allow_network:
        raise UsageError(
            f"--host {host} would open llama.cpp's RPC protocol, which has no authentication or encryption, to "
            "the network: anyone who reaches the port can read and write this machine's memory through it",
            hint="Keep the worker on 127.0.0.1 and use an SSH tunnel (see --help), or add --allow-network on a "
            "network that is yours alone.",
        )
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a port in use fails here, in one line
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="Choose another --port."
            ) from None


@command(help=command_help(HELP), no_args_is_help=False)
@handle_errors
def worker(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless --allow-network)."),
    port: int = typer.Option(50052, "--port", help="Port to listen on."),
    device: str = typer.Option("auto", "--device", help="auto (the GPUs if any, else the CPU), cpu, gpu or all."),
    mem: str | None = typer.Option(None, "--mem", help="Offer at most this much memory per device (e.g. 16GiB)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: physical cores)."),
    allow_network: bool = typer.Option(False, "--allow-network", help="Listen beyond loopback (no encryption!)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Keep no tensor cache (clients resend every weight)."),
) -> None:
    from localr1 import limits
    from localr1.engine.rpc import choose_devices, guard_links, link_timeout, rpc_reg, serve_devices
    from localr1.errors import UsageError
    from localr1.machine.cpu import physical_cores
    from localr1.machine.hardware import parse_size
    from localr1.paths import cache_dir
    from localr1.units import gib

    if device not in ("auto", "cpu", "gpu", "all"):
        raise UsageError(f"--device must be auto, cpu, gpu or all, not {device!r}")
    limits.threads(threads)  # the same bounds as ask's (a worker with 100,000 died at its first client)
    check_worker_bind(host, port, allow_network=allow_network)
    link_timeout()  # a bad LOCALR1_WORKER_TIMEOUT fails here, not later
    cap = parse_size(mem) if mem else None
    if cap is not None and cap <= 0:
        raise UsageError("--mem must be more than 0")
    rpc_reg()  # a build without RPC fails here, naming the command that fixes it
    if device == "auto":
        from localr1.engine.devices import list_devices

        device = "gpu" if any(d.is_gpu and not d.name.startswith("RPC") for d in list_devices()) else "cpu"
    devices = choose_devices(device)
    cache = None if no_cache else cache_dir() / "rpc"
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    n_threads = threads or physical_cores()
    shown = host if ":" not in host else f"[{host}]"
    endpoint = f"{shown}:{port}"
    if not is_loopback(host):
        sys.stderr.write(
            "Warning: this worker is reachable from the network, without authentication or encryption. "
            "Stop it (Ctrl-C) when you are done.\n"
        )
    sys.stdout.write(f"localr1 worker on {endpoint} (llama.cpp RPC), {n_threads} threads\n")
    for d in devices:
        offered = f", offering {gib(min(cap, d.memory_total))}" if cap else ""
        sys.stdout.write(f"  {d.name}: {d.description}, {gib(d.memory_free)} free of {gib(d.memory_total)}{offered}\n")
    sys.stdout.write(f"  tensor cache: {cache if cache else 'off'}\n")
    sys.stdout.write(f"Use it from the machine that runs the model: --workers {endpoint} (Ctrl-C stops it)\n")
    sys.stdout.flush()

    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve_devices(endpoint, devices, cache_dir=cache, threads=n_threads, mem=cap)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failed.append(exc)

    server = threading.Thread(target=run, name="localr1-rpc-server", daemon=True)
    server.start()
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    guarded_at = 0.0
    try:
        while server.is_alive():
            time.sleep(0.2)
            if time.monotonic() - guarded_at > 1:  # each client it accepts: a client that vanished silently
                guard_links(local_port=port)  # is dropped within the link timeout, and the next one served
                guarded_at = time.monotonic()
    except KeyboardInterrupt:
        sys.stderr.write("Stopped.\n")
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise failed[0]
    from localr1.errors import EngineError

    raise EngineError(f"llama.cpp's RPC server stopped on {endpoint}", hint="Run with --debug for llama.cpp's log.")
