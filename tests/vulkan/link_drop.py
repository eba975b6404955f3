"""A worker's network goes silent mid-generation: run inside a network namespace of its own (`unshare -n`),
where a firewall rule (nftables) drops every packet of the client's connection to the worker, as a pulled
cable or a dead Wi-Fi link would. Nothing is closed, so nothing tells either side: only the link guards can.
A second ask, on a new connection, then shows whether the worker gave up on the vanished client.

    unshare -n python link_drop.py MODEL   →   one JSON line: what ask did, how long it took, and whether
                                              the worker served a new client
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PORT = 50071


def nft(*commands: str) -> None:
    for command in commands:
        subprocess.run(["nft", command], check=True)


def main(model: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {k: v for k, v in os.environ.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "localr1", "worker", "--port", str(PORT), "--device", "cpu", "--mem", "256MiB",
         "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not worker.stdout.readline().startswith("Use it from"):
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited: {worker.stderr.read()}")
        ask = [sys.executable, "-m", "localr1", "ask", "-m", model, "--ctx", "2048", "--gpu-layers", "20",
               "--workers", f"127.0.0.1:{PORT}", "--temperature", "0"]  # fmt: skip
        first = subprocess.Popen(
            [*ask, "Tell me a very long story.", "--max-tokens", "3000"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        streamed = first.stdout.read(20)  # the answer streams: part of the model is on the worker
        # the client's connections to the worker, by their port on the client's side
        listing = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{PORT} )"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        clients = sorted({int(line.split()[-1].rpartition(":")[2]) for line in listing.splitlines() if line.strip()})
        nft("add table inet cut", "add chain inet cut input { type filter hook input priority 0 ; }")
        for port in clients:  # that flow alone goes silent, both ways: a new connection still gets through
            nft(f"add rule inet cut input tcp dport {port} drop", f"add rule inet cut input tcp sport {port} drop")
        dropped = time.monotonic()
        try:
            code = first.wait(120)
        except subprocess.TimeoutExpired:
            first.kill()
            code = None
        waited = time.monotonic() - dropped
        back = time.monotonic()  # the old flow is still dropped: the worker must give up on that client itself
        second = subprocess.run([*ask, "Hi", "--max-tokens", "4"], env=env, capture_output=True, text=True,
                                timeout=180)  # fmt: skip
        print(json.dumps({
            "streamed": streamed, "code": code, "seconds": waited, "stderr": first.stderr.read(),
            "again_code": second.returncode, "again_seconds": time.monotonic() - back,
            "again_stderr": second.stderr[-2000:], "worker_alive": worker.poll() is None, "clients": clients,
        }))  # fmt: skip
    finally:
        worker.kill()


if __name__ == "__main__":
    main(sys.argv[1])
