"""``localr1 serve``: keep one model loaded and answer OpenAI and Ollama API requests."""

from __future__ import annotations

import sys
import threading
from typing import Annotated

import typer

from localr1.cli import options as opt
from localr1.cli.helptext import command_help
from localr1.cli.state import command, handle_errors
from localr1.server.connections import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_S, ConnectionLimits
from localr1.server.run import is_loopback

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

HELP = """Serve a model over the OpenAI and Ollama APIs, with the thinking kept apart.

OpenAI: /v1/chat/completions, /v1/completions, /v1/models (the thinking in "reasoning_content").

Ollama: /api/chat, /api/generate, /api/tags, /api/show, /api/version (the thinking in "thinking").

With --parallel N, N requests decode together in one batch; up to --queue more wait, further ones get 503.

Binds 127.0.0.1 unless --host says otherwise; any other address needs --api-key (or --insecure).

Examples:
$ localr1 serve r1:7b
$ localr1 serve r1:14b --parallel 4 --ctx 16384
$ localr1 serve ./model.gguf --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
$ curl http://127.0.0.1:11435/v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}]}'
$ localr1 ask "what is 7*6?" --server http://127.0.0.1:11435
"""


@command(help=command_help(HELP), no_args_is_help=False)
@handle_errors
@opt.simulated
def serve(
    model: str | None = typer.Argument(None, help="A .gguf file or a catalog name (default: the best fit)."),
    model_option: opt.ModelOpt = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless you say so)."),
    port: int = typer.Option(11435, "--port", help="Port to listen on."),
    parallel: int = typer.Option(1, "--parallel", "-p", help="Requests decoded together (each gets --ctx)."),
    queue: int = typer.Option(8, "--queue", help="Requests that may wait for a slot; more get 503."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LOCALR1_API_KEY", help="Require this key (Authorization: Bearer KEY)."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without an API key."),
    cors: Annotated[
        list[str] | None, typer.Option("--cors", help="Allow browser requests from this origin (repeatable).")
    ] = None,
    json_logs: bool = typer.Option(False, "--json-logs", help="Log one JSON object per request."),
    max_connections: int = typer.Option(
        DEFAULT_MAX_CONNECTIONS, "--max-connections", help="Open connections at most (an idle one makes room)."
    ),
    request_timeout: float = typer.Option(
        DEFAULT_REQUEST_TIMEOUT_S, "--request-timeout", help="Seconds a client has to send a whole request."
    ),
    ctx: opt.CtxOpt = None,
    threads: opt.ThreadsOpt = None,
    gpu_layers: opt.GpuLayersOpt = None,
    offline: opt.OfflineOpt = False,
    offload_mode: opt.OffloadOpt = "auto",
    gpu_experts: opt.GpuExpertsOpt = None,
    kv_type: opt.KvTypeOpt = None,
    workers: opt.WorkersOpt = None,
    speculate: opt.SpeculateOpt = None,
    draft: opt.DraftOpt = None,
    simulate=None,
) -> None:
    model = opt.one_model(model, model_option)
    from localr1 import limits
    from localr1.cli.library import pull_target
    from localr1.config import load_config
    from localr1.loader import open_model
    from localr1.server.run import bind_socket, check_bind

    limits.bounded("--queue", queue, 0, 4096)
    connection_limits = ConnectionLimits(max_connections, request_timeout)
    request = opt.load_request(
        model, ctx=ctx, gpu_layers=gpu_layers, threads=threads, offline=offline, offload=offload_mode,
        gpu_experts=gpu_experts, simulate=simulate, kv_type=kv_type, parallel=parallel, workers=workers,
        speculate=speculate, draft=draft,
    )  # fmt: skip
    check_bind(host, port, api_key=api_key, insecure=insecure)
    sock = bind_socket(host, port)  # a port in use fails now, not after a minute of loading
    cancel = threading.Event()
    try:
        from localr1.cli.ask import cancel_on_sigint

        with cancel_on_sigint(cancel):
            loaded = open_model(
                request, load_config(), cancel=cancel, fetch=lambda t, off: pull_target(t, off, cancel=cancel)
            )
        from localr1.server.settings import Settings

        settings = Settings(api_key=api_key, cors=tuple(cors or ()), json_logs=json_logs, local_only=is_loopback(host))
        _serve_loaded(loaded, sock, host, queue=queue, settings=settings, limits=connection_limits)
    finally:
        sock.close()


def _serve_loaded(loaded, sock, host: str, *, queue: int, settings, limits: ConnectionLimits) -> None:
    from dataclasses import replace

    from localr1.server.app import build_app
    from localr1.server.connections import fit_to_open_files
    from localr1.server.run import serve as run_server
    from localr1.server.service import Service

    engine = loaded.engine  # with --parallel N > 1, a BatchedEngine (the registry's choice)
    service = Service(engine, loaded.label, queue=queue)

    def log(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    app = build_app(service, replace(settings, log=log))
    limits, note = fit_to_open_files(limits)
    if note:
        log(f"Note: {note}")
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def started() -> None:
        info = engine.info
        log(
            f"Serving {loaded.label} ({info.quant}, {service.slots} x {service.n_ctx_slot:,}-token context"
            f"{', GPU layers ' + str(info.n_gpu_layers) if info.n_gpu_layers else ''}) at http://{shown}:{port}"
        )
        log(f"OpenAI: http://{shown}:{port}/v1   Ollama: http://{shown}:{port}   Ctrl-C stops.")

    try:
        run_server(app, sock, limits=limits, on_started=started)
    finally:
        engine.close()
    log("Stopped.")
