"""Opening the model the user asked for: plan it, fetch it if it is not on disk, load it.

Shared by ``ask``, ``chat`` and ``bench``; front ends pass callbacks for what they show (the download
announcement and progress, the out-of-memory retry notice).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from localr1.config import Config
from localr1.engine import registry
from localr1.engine.base import Engine
from localr1.engine.rpc import add_workers, guard_links, worker_peers
from localr1.errors import DownloadError, InvalidModelFileError, ModelTooBigError, OutOfMemoryError, UsageError
from localr1.fit import candidates as cands
from localr1.fit.draft import place_beside
from localr1.fit.memory import kv_type_fits
from localr1.fit.planner import DEFAULT_CTX, Fallbacks, NoPlanError, Plan, PlanOptions, choose, plan_candidate
from localr1.fit.request import DEFAULT_SPECULATE, LoadRequest
from localr1.machine.doctor import idle_gpu_warning
from localr1.machine.hardware import Hardware, machine
from localr1.models.catalog import load_catalog, split_name
from localr1.models.download import offline_mode, pull, resolve_target
from localr1.models.gguf_info import GGUFInfo, inspect_model
from localr1.models.resolve import find_catalog_file, local_models, resolve_model
from localr1.units import gib


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    debug: bool = False
    tensor_overrides: tuple[tuple[str, str], ...] = ()
    mlock: bool = False
    n_batch: int | None = None  # None: the engine's default
    flash_attn: bool | None = None  # None: llama.cpp decides
    engine: str = "llama.cpp"  # a name in localr1.engine.registry
    n_seq: int = 1  # sequences decoded together; n_ctx is each one's context
    kv_type: str = "f16"  # the KV cache's type: f16, q8_0 or q4_0
    main_device: str | None = None  # every layer on it ("local" or a worker's "RPC1"); None: llama.cpp splits
    speculate: str = "off"  # speculative decoding: off, ngram, draft or auto (engine/speculative.py)
    draft: Path | None = None  # the draft model's file, for draft and auto
    draft_gpu_layers: int = 0  # the draft's GPU layers (-1: all), as fit/draft.py placed it


def load_engine(path: Path, header, options: EngineOptions, cancel: threading.Event | None = None) -> Engine:
    """Open the engine registered as ``options.engine`` (llama.cpp unless a test or a plug-in says otherwise)."""

    return registry.get(options.engine)(path, header, options, cancel)


def load_with_fallback(
    path: Path,
    header: GGUFInfo,
    options: EngineOptions,
    plan: Plan | None,
    cancel: threading.Event,
    say: Callable[[str], None] | None = None,
) -> Engine:
    """Load as planned; if memory runs out after all, retry with fewer GPU layers or a smaller context.

    ``say`` receives the retry notice (default: stderr)."""

    fallbacks = Fallbacks(plan) if plan is not None else None
    while True:
        try:
            return load_engine(path, header, options, cancel)
        except OutOfMemoryError:
            smaller = fallbacks.next() if fallbacks else None
            if smaller is None:
                raise
            n_ctx, layers = smaller
            notice = (
                f"Out of memory with {_describe(options.n_ctx, options.n_gpu_layers)}; "
                f"retrying with {_describe(n_ctx, layers)}."
            )
            (say or (lambda text: sys.stderr.write(text + "\n")))(notice)
            options = replace(options, n_ctx=n_ctx, n_gpu_layers=layers)


def _describe(n_ctx: int | None, layers: int | None) -> str:
    where = "all layers on the GPU" if layers is not None and layers < 0 else f"{layers or 0} GPU layers"
    return f"a {n_ctx or 0:,}-token context and {where}"


def _plan_options(request: LoadRequest, config: Config) -> PlanOptions:
    """The planner's options for a request: its context (else the config's, else the default: kept only
    when the user set one), GPU layers, MoE placement, slots and KV cache type."""
    return PlanOptions(
        want_ctx=request.ctx or config.ctx or DEFAULT_CTX,
        keep_ctx=bool(request.ctx or config.ctx),
        gpu_layers=request.gpu_layers,
        offload=request.offload,
        gpu_experts=request.gpu_experts,
        slots=request.parallel,
        kv_type=request.kv_type or config.kv_type,
    )


def plan_for(request: LoadRequest, hw: Hardware, config: Config, *, prefer_local: bool) -> Plan:
    """The plan for what the request names (a catalog name, a file) or, with nothing named, the best R1 for
    the machine, with the request's context (else the config's), GPU layers and MoE placement. With
    ``prefer_local``, builds already on disk win when one fits. The plan's candidate has no path when it
    still has to be downloaded."""

    opts = _plan_options(request, config)
    want, keep = opts.want_ctx, opts.keep_ctx  # a context the user set is kept; the default may shrink
    catalog = load_catalog()
    spec = request.spec or config.default_model

    def best(pool, what):
        if prefer_local and (local := [c for c in pool if c.path is not None]):
            try:
                return choose(local, hw, opts)
            except NoPlanError:
                pass
        try:
            return choose(pool, hw, opts)
        except NoPlanError as exc:
            if what is None:
                raise _too_big(None, exc, want, keep) from None
            # the user chose this model: rather than refuse it for speed, take its fastest build that fits
            for c in sorted(pool, key=lambda c: c.weights.total):
                plan = plan_candidate(c, hw, opts, min_tps=0.0)
                if plan is not None:
                    return replace(
                        plan, notes=(*plan.notes, f"slower than usual: about {plan.decode_tps:.1f} tokens/s")
                    )
            raise _too_big(what, exc, want, keep) from None

    if spec:
        name, quant = split_name(spec)
        if name in catalog:
            model = catalog[name]
            if quant is not None:
                model.file_for(quant)  # an unknown quant is a clear error
            pool = [c for c in cands.from_catalog({name: model}) if quant is None or c.quant == quant]
            if pool:
                _check_kv_type(pool[0], opts.kv_type)
            return best(pool, spec)
        local = resolve_model(spec, config, catalog)
        candidate = cands.from_file(local.path, local=local)
        _check_kv_type(candidate, opts.kv_type)
        attempts: list = []
        plan = plan_candidate(candidate, hw, opts, min_tps=0.0, attempts=attempts)
        if plan is None:
            reason = next((a.reason for a in reversed(attempts) if not a.ok), "it does not fit")
            raise ModelTooBigError(
                f"{candidate.label} does not fit this machine{_at_ctx(want, keep)}: {reason}",
                hint="Try a smaller --ctx or quant, or give both --ctx and --gpu-layers to load it anyway.",
            )
        return plan
    pool, skipped = cands.from_catalog(catalog), []
    for m in _loose_local_models(catalog):
        try:
            pool.append(cands.from_file(m.path, local=m))
        except InvalidModelFileError as exc:  # an unrelated broken file must not stop the choice
            skipped.append(f"{m.path.name} was left out: {exc.message}")
    plan = best(pool, None)
    return replace(plan, notes=(*plan.notes, *skipped)) if skipped else plan


def _replan_for_listing(plan, listed: int, request: LoadRequest, hw, config, say):
    """Before the first byte: when the Hub lists the build at another size than the catalog planned with (a
    re-upload), plan that build again at the listed size and say so; if it no longer fits, stop before
    downloading. None when the plan stands."""

    planned = plan.candidate.weights.total
    if not listed or abs(listed - planned) <= 0.02 * planned:
        return None
    c = replace(plan.candidate, weights=plan.candidate.weights.scaled_to(listed), listed=True)
    fresh = plan_candidate(c, hw, _plan_options(request, config), min_tps=0.0)
    differs = f"{c.label} is {gib(listed)} on the Hub, not the {gib(planned)} the catalog lists"
    if fresh is None:
        raise ModelTooBigError(
            f"{differs}: at that size it does not fit this machine (nothing was downloaded)",
            hint="Choose a smaller build (localr1 plan --explain lists them), or update localr1 for a newer catalog.",
        )
    (say or (lambda text: sys.stderr.write(text + "\n")))(
        f"{differs}: planned again before downloading ({fresh.n_ctx:,}-token context, GPU layers {fresh.n_gpu_layers})."
    )
    return fresh


def _replan_if_different(plan, path: Path, request: LoadRequest, hw, config, say):
    """After a download: when the file is not the size the catalog planned with (a re-upload, a build the
    Hub lists differently), plan again for the file itself, and say so. None when the plan stands."""

    local = resolve_model(str(path), config)
    exact = cands.from_file(local.path, local=local)
    planned = plan.candidate.weights.total
    if abs(exact.weights.total - planned) <= 0.02 * planned:
        return None
    fresh = plan_for(replace(request, spec=str(path)), hw, config, prefer_local=True)
    (say or (lambda text: sys.stderr.write(text + "\n")))(
        f"{plan.candidate.label} is {gib(exact.weights.total)}, not the {gib(planned)} planned: "
        f"re-planned for the file ({fresh.n_ctx:,}-token context, GPU layers {fresh.n_gpu_layers})."
    )
    return fresh


def _check_kv_type(candidate, kv_type: str | None) -> None:

    if kv_type and not kv_type_fits(candidate.arch, kv_type):
        raise UsageError(
            f"{candidate.label} cannot keep a {kv_type} KV cache: its attention heads are not a multiple of 32 values",
            hint="Use --kv-type f16.",
        )


def _loose_local_models(catalog):

    return [m for m in local_models(catalog) if m.catalog is None]


def _at_ctx(want: int, keep: bool) -> str:
    return f" with a {want:,}-token context" if keep else ""


def _too_big(what: str | None, exc, want: int, keep: bool) -> ModelTooBigError:
    """``what`` is the model the user named; None when localr1 was choosing among all of them."""
    reason = next((a.reason for a in reversed(exc.attempts) if not a.ok), "not enough memory")
    smaller = " Or ask for a smaller --ctx." if keep else ""
    subject = f"{what} does not fit" if what else "no R1 model fits"
    return ModelTooBigError(
        f"{subject} this machine{_at_ctx(want, keep)}: {reason}",
        hint=f"Usable: GPU {gib(exc.budget.gpu)}, RAM {gib(exc.budget.ram)}. See: localr1 plan --explain.{smaller}",
    )


@dataclass
class LoadedModel:
    engine: Engine
    label: str
    path: Path
    plan: Plan | None  # None when --ctx and --gpu-layers were both given


def _not_on_disk(label: str, *, chosen: bool, offline: bool, cause: DownloadError) -> DownloadError:
    """Name the model that was being fetched (a user who typed only ``ask "..."`` did not name one)."""
    what = f"{label} (the best fit for this machine)" if chosen else label
    on_disk = "`localr1 list` shows the models on disk, and --model takes any .gguf file."
    if offline:
        return DownloadError(
            f"{what} is not downloaded and localr1 is offline",
            hint=f"Run `localr1 pull {label}` while connected (or unset HF_HUB_OFFLINE); {on_disk}",
        )
    return DownloadError(f"could not download {what}: {cause.message}", hint=cause.hint or on_disk)


def join_workers(request: LoadRequest, config: Config) -> list:
    """The request's (else the config's) `localr1 worker`s, added as llama.cpp devices before planning."""
    workers = list(request.workers or config.workers)
    if not workers:
        return []

    return add_workers(workers)


def open_model(
    request: LoadRequest,
    config: Config,
    *,
    cancel: threading.Event | None = None,
    fetch: Callable | None = None,
    say: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Plan (unless both a context and GPU layers are given), fetch with ``fetch(target, offline)`` if the
    planned build is not on disk, and load it, retrying smaller if llama.cpp runs out of memory."""

    request = request.validated()
    say = say or (lambda text: sys.stderr.write(text + "\n"))
    workers = [d.endpoint for d in join_workers(request, config)]
    spec = request.spec
    n_ctx = request.ctx or config.ctx
    layers = request.gpu_layers if request.gpu_layers is not None else config.gpu_layers
    overrides, mlock, plan = (), False, None
    kv_type = request.kv_type or config.kv_type or "f16"
    if n_ctx and layers is not None:  # both given: load exactly that, no planning
        local = resolve_model(spec, config)
        path, label = local.path, local.name
    else:
        hw = machine(request.simulation)
        if warning := idle_gpu_warning(hw):
            say(f"Warning: {warning}")
        asked = replace(request, gpu_layers=layers)  # the GPU layers the user or the config set, if any
        plan = plan_for(asked, hw, config, prefer_local=True)
        path, label = plan.candidate.path, plan.candidate.label
        if path is None:  # the chosen build is not on disk yet
            off = offline_mode(request.offline)
            try:
                target = resolve_target(label, offline=off)
            except DownloadError as exc:
                raise _not_on_disk(label, chosen=spec is None, offline=off, cause=exc) from exc
            plan = _replan_for_listing(plan, target.size, asked, hw, config, say) or plan
            try:
                path = fetch(target, off) if fetch else pull(target, offline=off, show_progress=False)
            except DownloadError as exc:
                raise _not_on_disk(label, chosen=spec is None, offline=off, cause=exc) from exc
            plan = _replan_if_different(plan, path, asked, hw, config, say) or plan
        n_ctx, layers, overrides, mlock, kv_type = (
            plan.n_ctx, plan.n_gpu_layers, plan.overrides, plan.mlock, plan.kv_type
        )  # fmt: skip
    speculate, draft, draft_layers = speculation(request, config, plan, label, say)
    options = EngineOptions(
        n_ctx=n_ctx,
        n_threads=request.threads or config.threads,
        n_gpu_layers=layers,
        debug=request.debug,
        tensor_overrides=overrides,
        mlock=mlock,
        n_seq=request.parallel,
        kv_type=kv_type,
        main_device=plan.placement.main_device if plan is not None and plan.placement is not None else None,
        speculate=speculate,
        draft=draft,
        draft_gpu_layers=draft_layers,
    )
    engine = load_with_fallback(path, inspect_model(path), options, plan, cancel or threading.Event(), say=say)
    if workers:  # the model's connections to the workers exist now: a silent network drop must not hang it
        guard_links(peers=worker_peers(workers))
    return LoadedModel(engine, label, path, plan)


def speculation(request: LoadRequest, config: Config, plan: Plan | None, label: str, say) -> tuple:
    """(mode, draft file or None, the draft's GPU layers) for a request: its --speculate, else the config's,
    else auto; ``draft`` without a draft that fits is ``ngram`` (the reason said)."""
    mode = request.speculate or config.speculate or DEFAULT_SPECULATE
    if mode not in ("draft", "auto"):
        return mode, None, 0
    draft, layers = draft_for(request, config, plan, label, mode, say)
    return ("ngram" if draft is None and mode == "draft" else mode), draft, layers


def draft_for(request: LoadRequest, config: Config, plan: Plan | None, label: str, mode: str, say) -> tuple:
    """The draft model's file and GPU layers for ``--speculate draft`` / ``auto``, or (None, 0) with the
    reason said: the one asked for (``--draft``, the config's), else the one the catalog names for the
    target. ``auto`` takes a draft only when it is on disk; ``draft`` downloads a catalog draft. The draft
    goes beside the target's plan (fit/draft.py) or not at all; for ``auto``, only on a GPU."""
    catalog = load_catalog()
    spec = request.draft or config.draft
    if spec is None:
        target = catalog.get(split_name(label)[0])
        spec = target.draft if target is not None else None
    if spec is None:
        if mode == "draft":
            raise UsageError(
                f"the catalog names no draft model for {label}",
                hint="Give --draft MODEL (a catalog name or a .gguf with the same tokenizer), or use --speculate ngram.",
            )
        return None, 0
    if request.parallel > 1:  # the batched engine drafts from n-grams only
        if mode == "draft":
            say("Speculating with n-grams only: a draft model is not used with --parallel above 1.")
        return None, 0
    path = _draft_on_disk(spec, config, catalog)
    if path is None:
        if mode == "auto":
            return None, 0
        name = split_name(spec)[0]
        off = offline_mode(request.offline)
        quant = split_name(spec)[1] or catalog[name].default_quant
        path = pull(resolve_target(f"{name}:{quant}", offline=off), offline=off, show_progress=False)
    if plan is None:  # context and GPU layers given: the draft goes where the target's layers go
        on_gpu = (request.gpu_layers or 0) != 0
        return (path, -1 if on_gpu else 0) if on_gpu or mode == "draft" else (None, 0)
    local = resolve_model(str(path), config)
    placed, why = place_beside(cands.from_file(local.path, local=local), plan)
    if placed is None:
        say(f"Not drafting with {spec}: {why} (speculating with n-grams only).")
        return None, 0
    if mode == "auto" and not placed.for_auto:
        return None, 0
    return path, placed.n_gpu_layers


def _draft_on_disk(spec: str, config: Config, catalog) -> Path | None:
    """The draft's file when it is on disk (a catalog name: its default quant first, then any), else None."""
    name, quant = split_name(spec)
    if name in catalog:
        model = catalog[name]
        quants = [quant] if quant else [model.default_quant, *model.quants]
        for q in quants:
            if (path := find_catalog_file(model, q)) is not None:
                return path
        return None
    return resolve_model(spec, config, catalog).path  # a file: missing is an error
