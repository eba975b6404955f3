"""``localr1 hw``, ``localr1 models`` and ``localr1 plan``: the machine, the catalog, and the choice."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import typer

from localr1.cli.helptext import command_help
from localr1.cli.options import (
    CtxOpt,
    GpuExpertsOpt,
    JsonOpt,
    KvTypeOpt,
    ModelOpt,
    OffloadOpt,
    WorkersOpt,
    load_request,
    one_model,
    simulated,
)
from localr1.cli.state import command, handle_errors
from localr1.units import gib

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.


def hardware_lines(hw) -> list[str]:
    from localr1.fit.capacity import step_share

    lines = [
        f"{'Machine':12} {hw.os} · {hw.cpu} ({hw.physical_cores} cores{', ' + ' '.join(hw.simd) if hw.simd else ''})"
    ]
    lines.append(f"{'RAM':12} {gib(hw.ram_total)} total, {gib(hw.ram_available)} available")
    if hw.cpu_decode_gbs:
        rates = ", ".join(f"{k.upper()} {v:.1f}" for k, v in hw.cpu_decode_gbs.items() if k != "attn")
        lines.append(f"{'CPU kernels':12} {rates} GB/s of weights (measured with {hw.physical_cores} threads)")
        if hw.cpu_decode_gbs.get("attn"):
            lines.append(f"{'':12} flash attention {hw.cpu_decode_gbs['attn']:.1f} GB/s of KV cache per query head")
        how = "measured: one decode step of a probe model" if hw.cpu_step_probe_s > 0 else "not measured: assumed"
        lines.append(f"{'':12} a whole decode step reaches {step_share(hw):.0%} of that ({how})")
    if not hw.gpus:
        lines.append(f"{'GPU':12} none")
    for i, g in enumerate(hw.gpus):
        kind = "unified memory, GPU share" if g.unified else "VRAM"
        cc = f", compute {g.compute_capability}" if g.compute_capability else ""
        lines.append(
            f"{'GPU ' + str(i):12} {g.name}: {gib(g.total)} {kind}, {gib(g.free)} free{cc} (~{g.bandwidth_gbs:.0f} GB/s)"
        )
    lines.append(f"{'llama.cpp':12} {', '.join(hw.backends) or 'unknown'}")
    lines.append(f"{'Disk':12} {gib(hw.disk_free)} free{' at ' + hw.disk_path if hw.disk_path else ''}")
    if hw.simulated:
        lines.append(f"{'':12} (simulated)")
    for note in hw.notes:
        lines.append(f"{'Note':12} {note}")
    from localr1.machine.doctor import idle_gpu_warning

    fix = idle_gpu_warning(hw)
    if fix:
        lines.append(f"{'Warning':12} {fix}")
    return lines


def fit_mark(plan) -> str:
    if plan is None:
        return "too big"
    return {
        "gpu": "fits on GPU",
        "unified": "fits (unified memory)",
        "partial": "partial offload",
        "cpu": "CPU only",
        "offload": "offload: experts across machines, RAM and disk"
        if plan.placement is not None and plan.placement.devices
        else "offload: experts across GPU, RAM and disk",
    }[plan.mode]


def plan_lines(plan, *, explain: bool, hw=None) -> list[str]:
    from localr1.fit.capacity import step_share

    c, m, b = plan.candidate, plan.memory, plan.budget
    n_layer = c.arch.n_layer
    layers = (
        f"all {n_layer} layers on the GPU"
        if plan.n_gpu_layers < 0 and plan.mode != "cpu"
        else f"{plan.n_gpu_layers} of {n_layer} layers on the GPU"
        if plan.n_gpu_layers
        else "on the CPU"
    )
    if plan.placement is not None and plan.placement.devices:  # across machines
        main, *helpers = plan.placement.devices
        layers = f"hot tensors and {len(main.expert_layers)} layers' experts on {main.device}"
        if helpers:
            spread = sum(len(d.expert_layers) for d in helpers)
            layers += f", {spread} layers' experts on {len(helpers)} more device{'s' if len(helpers) > 1 else ''}"
    elif plan.placement is not None:
        layers = f"hot tensors and {len(plan.placement.gpu_expert_layers)} layers' experts on the GPU"
    lines = [f"{c.label}: {plan.n_ctx:,}-token context, {layers} ({fit_mark(plan)})"]
    # weights left memory-mapped on disk are not held in memory: shown on a line of their own
    if b.unified:
        lines.append(
            f"  memory   {gib(m.gpu_total + m.cpu_total - plan.disk_bytes)} of {gib(b.gpu)} usable unified memory"
        )
    else:
        if m.gpu_total:
            lines.append(f"  GPU      {gib(m.gpu_total)} of {gib(b.gpu)} usable")
        lines.append(f"  RAM      {gib(m.cpu_total - plan.disk_bytes)} of {gib(b.ram)} usable")
    if plan.disk_bytes:
        lines.append(f"  disk     {gib(plan.disk_bytes)} of weights memory-mapped, read as tokens need them")
    lines.append(
        f"  parts    weights {gib(c.weights.total)}{'' if c.exact else ' (Hub listing)' if c.listed else ' (estimated)'}, "
        f"KV cache {gib(m.kv_total)} ({plan.kv_type}), compute buffers {gib(m.compute_total)}"
    )
    measured = hw is not None and bool(hw.cpu_decode_gbs) and plan.mode == "cpu"
    basis = "this CPU's measured kernel speed" if measured else "memory bandwidth"
    lines.append(f"  speed    about {plan.decode_tps:.0f} tokens/s decode (estimate from {basis})")
    lines.append(f"  file     {c.path}" if c.path else "  file     not downloaded yet")
    lines += [f"  note     {n}" for n in plan.notes]
    if explain:
        if hw is not None:
            gpus = ", ".join(f"{g.name} ({g.bandwidth_gbs:.0f} GB/s)" for g in hw.gpus) or "none"
            cpu = (
                f"CPU kernels {hw.cpu_decode_gbs.get('q4_k', 0):.1f} GB/s (Q4_K, measured), {step_share(hw):.0%} of it "
                "in a whole step"
                if hw.cpu_decode_gbs
                else f"RAM {hw.ram_bandwidth_gbs:.0f} GB/s"
            )
            lines.append(f"  assumed  GPUs: {gpus}; {cpu}")
        lines.append("")
        lines.append("What was tried, best expected quality first:")
        for a in plan.attempts:
            layers = "all" if a.n_gpu_layers > n_layer or a.n_gpu_layers < 0 else str(a.n_gpu_layers)
            where = f"ctx {a.n_ctx:>6,} · GPU layers {layers:>3}" if a.n_ctx else " " * 27
            lines.append(f"  {'✓' if a.ok else '✗'} {a.label:28} {where}  {a.reason}")
    return lines


def _placement(plan, hw, mode: str, gpu_experts: int | None):
    """For a MoE model: its tensor placement across GPU, RAM and disk (None for dense models or --offload off)."""
    from localr1.fit.offload import OffloadError, plan_offload

    if mode == "off" or not plan.candidate.arch.is_moe:
        return None, None
    try:
        return plan_offload(
            plan.candidate, hw, plan.n_ctx, mode=mode, gpu_experts=gpu_experts, budget=plan.budget,
            kv_type=plan.kv_type,
        ), None  # fmt: skip
    except OffloadError as exc:
        return None, str(exc)


@command(
    help=command_help(
        """Show the machine as localr1 sees it: GPUs, memory, llama.cpp backends, disk.

        Examples:
        $ localr1 hw
        $ localr1 hw --json
        $ localr1 hw --vram 12GiB --ram 32GiB      # simulate another machine
        $ localr1 hw --known-gpus                  # the GPU models --gpu accepts by name
        $ localr1 hw --measure                     # time this CPU's kernels again (on a quiet machine)
        """
    )
)
@handle_errors
@simulated
def hw(
    json_out: JsonOpt = False,
    known_gpus: bool = typer.Option(
        False, "--known-gpus", help="List the GPUs localr1 knows by name (memory, bandwidth), for --gpu."
    ),
    measure: bool = typer.Option(
        False, "--measure", help="Time the CPU's kernels and a decode step again, replacing the cached figures."
    ),
    simulate=None,  # the simulation flags, as one Simulation (see options.simulated)
) -> None:
    from localr1.engine.cpu_speed import forget_cpu_speed
    from localr1.machine.hardware import KNOWN_GPUS, machine

    if known_gpus:
        if json_out:
            sys.stdout.write(json.dumps([g.__dict__ for g in KNOWN_GPUS], indent=2) + "\n")
            return
        for g in KNOWN_GPUS:
            memory = f"{g.memory_gib:g} GB" if g.memory_gib else "unified"
            sys.stdout.write(f"{g.vendor:7} {g.name:20} {memory:>9}  {g.bandwidth_gbs:6.0f} GB/s\n")
        return
    if measure:  # the planner's CPU figures are measured once and cached; a busy moment skews them
        forget_cpu_speed()
    machine_info = machine(simulate)
    if json_out:
        sys.stdout.write(json.dumps(machine_info.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(hardware_lines(machine_info)) + "\n")


@command(
    help=command_help(
        """List the R1 models localr1 knows, with what fits this machine and what is downloaded.

        Examples:
        $ localr1 models
        $ localr1 models --json
        $ localr1 models --vram 24GiB --ram 64GiB
        """
    )
)
@handle_errors
@simulated
def models(
    json_out: JsonOpt = False,
    simulate=None,  # the simulation flags, as one Simulation (see options.simulated)
) -> None:
    from localr1.fit.candidates import catalog_fits
    from localr1.machine.hardware import machine
    from localr1.models.catalog import load_catalog

    rows = []
    for fit in catalog_fits(load_catalog(), machine(simulate)):
        mark = None
        if fit.plan is None:
            mark = f"too slow (~{fit.best_slow_tps:.1f} tok/s at best)" if fit.best_slow_tps else "too big"
        rows.append((fit.model, fit.plan, fit.downloaded, mark))
    if json_out:
        out = [
            {
                "name": m.name,
                "title": m.title,
                "params_b": m.params_b,
                "aime2024": m.aime2024,
                "gpqa": m.gpqa,
                "license": m.license,
                "quants": m.quants,
                "downloaded": d,
                "fit": mark or fit_mark(p),
                "plan": p.to_dict() if p else None,
            }
            for m, p, d, mark in rows
        ]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    header = f"{'NAME':14} {'MODEL':40} {'AIME':>5} {'GPQA':>5}  {'THIS MACHINE':34} DOWNLOADED"
    sys.stdout.write(header + "\n")
    for m, p, d, mark in rows:
        fit = mark or f"{fit_mark(p)} ({p.candidate.quant}, ~{p.decode_tps:.0f} tok/s)"
        aime = f"{m.aime2024:.1f}" if m.aime2024 else "-"
        gpqa = f"{m.gpqa:.1f}" if m.gpqa else "-"
        sys.stdout.write(f"{m.name:14} {m.title[:40]:40} {aime:>5} {gpqa:>5}  {fit:34} {', '.join(d) or '-'}\n")


@command(
    help=command_help(
        """Choose the model, quant, context and GPU layers for this machine, and say why.

        Examples:
        $ localr1 plan
        $ localr1 plan r1:70b --ctx 32768 --explain
        $ localr1 plan --vram 8GiB --ram 16GiB --json
        $ localr1 plan r1:32b --gpu "RTX 4090" --ram 64GiB       # a GPU by name: its memory and bandwidth
        """
    )
)
@handle_errors
@simulated
def plan(
    model: str | None = typer.Argument(None, help="A catalog name or .gguf file (default: the best that fits)."),
    model_option: ModelOpt = None,
    ctx: CtxOpt = None,
    explain: bool = typer.Option(False, "--explain", help="Show every option tried and why it was rejected."),
    json_out: JsonOpt = False,
    offload: OffloadOpt = "auto",
    gpu_experts: GpuExpertsOpt = None,
    kv_type: KvTypeOpt = None,
    workers: WorkersOpt = None,
    measure_disk: bool = typer.Option(False, "--measure-disk", help="Measure disk read speed (reads 256 MiB)."),
    measure_link: bool = typer.Option(
        False, "--measure-link", help="Time an 8 MiB transfer to and from each worker (else 1 Gbit/s is assumed)."
    ),
    simulate=None,  # the simulation flags, as one Simulation (see options.simulated)
) -> None:
    model = one_model(model, model_option)
    from localr1.config import load_config
    from localr1.loader import join_workers, plan_for
    from localr1.machine.hardware import machine

    request = load_request(
        model, ctx=ctx, offload=offload, gpu_experts=gpu_experts, simulate=simulate, kv_type=kv_type, workers=workers
    )
    config = load_config()
    remote = join_workers(request, config)  # their devices join hw.gpus
    if measure_link and not remote:
        from localr1.errors import UsageError

        raise UsageError(
            "--measure-link measures the links to workers: there are none", hint="Add --workers host:port,..."
        )
    if measure_link:
        from localr1.engine.rpc import link_rtt, measure_links

        for endpoint, rate in measure_links([d.endpoint for d in remote]).items():
            if not json_out:
                sys.stdout.write(
                    f"Link to {endpoint}: {rate / 1e9:.2f} GB/s, round trip {link_rtt(endpoint) * 1000:.2f} ms "
                    "(measured)\n"
                )
    machine_info = machine(request.simulation)
    if measure_disk:
        from localr1.machine.hardware import measure_disk_read
        from localr1.paths import models_dir

        speed = measure_disk_read(models_dir())
        machine_info = replace(machine_info, disk_bandwidth_gbs=speed)
        if not json_out:
            sys.stdout.write(f"Disk reads: {speed:.2f} GB/s (measured in {models_dir()})\n")
    chosen = plan_for(request, machine_info, config, prefer_local=False)
    placement, why_not = (
        (chosen.placement, None) if chosen.placement else _placement(chosen, machine_info, offload, gpu_experts)
    )
    machines = _machines(chosen, machine_info, remote)
    draft = _draft(chosen)
    if json_out:
        out = _plan_json(chosen, machine_info, machines, placement)
        if draft is not None:
            out["draft"] = draft
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    lines = plan_lines(chosen, explain=explain, hw=machine_info)
    lines += _offload_lines(chosen, placement, why_not, offload) + _machine_lines(chosen, machines)
    lines += _draft_lines(draft)
    sys.stdout.write("\n".join(lines) + "\n")


def _draft(plan) -> dict | None:
    """The catalog's draft model for the planned one (speculative decoding) and where it would go beside the
    plan (fit/draft.py), or None when the catalog names none."""
    from localr1.fit.candidates import from_catalog
    from localr1.fit.draft import place_beside
    from localr1.models.catalog import load_catalog, split_name
    from localr1.models.resolve import find_catalog_file

    catalog = load_catalog()
    target = catalog.get(split_name(plan.candidate.name)[0]) if plan.candidate.name else None
    if target is None or target.draft is None or target.draft not in catalog:
        return None
    model = catalog[target.draft]
    candidate = next(
        c for c in from_catalog({model.name: model}, include_local=False) if c.quant == model.default_quant
    )
    placed, why = place_beside(candidate, plan)
    return {
        "model": candidate.label,
        "downloaded": find_catalog_file(model, model.default_quant) is not None,
        "device": placed.device if placed else None,
        "bytes": placed.bytes if placed else None,
        "used_by_auto": placed is not None and placed.for_auto,
        "left_out": why or None,
    }


def _draft_lines(draft: dict | None) -> list[str]:
    if draft is None:
        return []
    if draft["device"] is None:
        return [f"Draft model {draft['model']}: left out, {draft['left_out']} (n-grams still draft)."]
    where = "on the GPU" if draft["device"] == "GPU" else "in RAM (used with --speculate draft)"
    pull = "" if draft["downloaded"] else f"; localr1 pull {draft['model']} to use it"
    return [f"Draft model {draft['model']}: {gib(draft['bytes'])} {where}, beside the plan{pull}."]


def _plan_json(chosen, machine_info, machines: list[dict], placement) -> dict:
    """plan --json: the plan, the machine, each machine's share and the offload placement."""
    out = {**chosen.to_dict(), "hardware": machine_info.to_dict()}
    if machines:
        out["machines"] = machines
    if placement is not None:
        out["offload"] = {
            "gpu_bytes": placement.gpu_bytes,
            "ram_bytes": placement.ram_bytes,
            "disk_bytes": placement.disk_bytes,
            "gpu_expert_layers": placement.gpu_expert_layers,
            "ram_expert_layers": placement.ram_expert_layers,
            "disk_expert_layers": placement.disk_expert_layers,
            "decode_tokens_per_s": round(placement.decode_tps, 1),
            "llama_cpp_args": placement.ot_args(),
        }
        if placement.devices:  # across machines: what each device holds
            out["offload"]["main_device"] = placement.main_device
            out["offload"]["devices"] = [
                {"device": d.device, "endpoint": d.endpoint, "hot": d.hot, "bytes": d.bytes,
                 "expert_layers": d.expert_layers}
                for d in placement.devices
            ]  # fmt: skip
    return out


def _offload_lines(chosen, placement, why_not: str | None, offload: str) -> list[str]:
    """The offload placement (the plan's, or the one --offload would give) and its llama.cpp command."""
    lines: list[str] = []
    if placement is not None:
        used = "this plan" if chosen.placement is placement else "if you want it: --offload with ask and chat"
        lines += ["", f"Offload placement ({offload}, {used}):"] + ["  " + line for line in placement.describe()]
        if placement.decode_tps < 5:
            lines.append(
                "  slow: more RAM (keeps experts off the disk), a smaller quant, or a shorter context would help"
            )
        lines += [
            "  the same with llama.cpp:",
            "  llama-cli -m MODEL.gguf " + " ".join(f"'{a}'" if "(" in a else a for a in placement.ot_args()),
        ]
    elif why_not:
        lines += ["", f"Offload placement: {why_not}"]
    return lines


def _machine_lines(chosen, machines: list[dict]) -> list[str]:
    """Each machine's share when workers take part, and the llama.cpp command for the same split."""
    lines: list[str] = []
    if machines:
        spread = chosen.placement is not None and chosen.placement.devices
        how = (
            "the layers on one device, routed experts spread by tier"
            if spread
            else "llama.cpp spreads the GPU layers by each device's free memory"
        )
        lines += ["", f"Across machines ({how}):"]
        for m in machines:
            rtt = f", round trip {m['rtt_ms']:.2f} ms" if m.get("rtt_ms") else ""  # (measured, or assumed)
            if m.get("endpoint"):
                rtt += f", link {m['link_gbs']:.2f} GB/s" if m.get("link_gbs") else ", link 1 Gbit/s assumed"
            lines.append(f"  {m['device']:32} {gib(m['bytes'])}{rtt}")
        if not spread:  # (a spread placement printed its llama.cpp command above)
            layers = chosen.n_gpu_layers if chosen.n_gpu_layers >= 0 else 999
            rpc = ",".join(m["endpoint"] for m in machines if m.get("endpoint"))
            lines += [
                "  the same with llama.cpp:",
                f"  llama-cli -m MODEL.gguf --rpc {rpc} -ngl {layers} -c {chosen.n_ctx}",
            ]
    return lines


def _machines(plan, hw, remote) -> list[dict]:
    """GB per machine when workers (real or simulated) take part: this one's RAM, and each device's share of
    the GPU part; a worker's device with its endpoint (its name is "RPCn[host:port]") and round trip."""
    if not hw.has_workers:
        return []
    from localr1.fit.planner import device_shares

    measured = {d.name for d in remote}
    placement = plan.placement
    if placement is not None and placement.devices:  # the main device and the experts' devices, as placed
        held = {d.device: d.bytes for d in placement.devices}
        here = placement.devices[0].bytes if placement.main_device == "local" else 0
        shares = device_shares([g for g in hw.gpus if not g.remote], here)  # this machine's GPUs
        shares += [(g.name, held.get(g.name, 0)) for g in hw.gpus if g.remote]
        out = [{"device": "this machine (RAM)", "bytes": placement.ram_bytes}]
    else:
        shares = device_shares(hw.gpus, plan.memory.gpu_total)
        out = [{"device": "this machine (RAM)", "bytes": plan.memory.cpu_total}]
    by_name = {g.name: g for g in hw.gpus}
    for name, share in shares:  # [] if no free
        gpu = by_name[name]
        entry = {"device": name, "bytes": share, "rtt_ms": None, "measured": name in measured}
        if gpu.remote:
            entry.update(
                endpoint=gpu.endpoint,
                rtt_ms=round(gpu.latency_s * 1000, 3),
                link_gbs=round(gpu.link_gbs, 3) or None,  # None: not measured (1 Gbit/s assumed)
            )
        out.append(entry)
    return out
