"""What the user asked to open: one value, built once from the command line and checked in one place.

``ask``, ``chat``, ``plan`` and ``bench`` all open a model the same way: a model spec (a catalog name, a
.gguf file, or nothing: the best fit), the context, GPU layers, threads, whether to download, the MoE
placement and, for planning on a machine one does not have, a simulated one. A ``LoadRequest`` carries
all of it from the CLI to the loader and planner; adding a setting means adding one field here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from localr1 import limits
from localr1.errors import UsageError

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

if TYPE_CHECKING:
    from localr1.machine.hardware import Simulation

OFFLOAD_MODES = ("auto", "gpu", "ram", "disk", "off")
# speculative decoding (engine/speculative.py): n-grams of the context, a draft model, or both where one fits
SPECULATE_MODES = ("off", "ngram", "draft", "auto")
DEFAULT_SPECULATE = "auto"


def check_speculate(mode: str, name: str = "--speculate") -> str:
    if mode not in SPECULATE_MODES:
        raise UsageError(f"{name} must be one of {', '.join(SPECULATE_MODES)}, not {mode!r}")
    return mode


@dataclass(frozen=True)
class LoadRequest:
    spec: str | None = None  # catalog name, .gguf path, or None: the best model for the machine
    ctx: int | None = None  # None: the config's, or the planner's default
    gpu_layers: int | None = None  # None: the config's, or as planned
    threads: int | None = None  # None: the config's, or the physical cores
    offline: bool = False
    offload: str = "auto"  # MoE placement, one of OFFLOAD_MODES
    gpu_experts: int | None = None  # MoE: layers of routed experts on the GPU
    simulation: Simulation | None = None  # plan for this machine instead of the real one
    debug: bool = False
    parallel: int = 1  # sequences decoded together (serve); ``ctx`` is each one's context
    kv_type: str | None = None  # f16, q8_0 or q4_0; None: the config's, else f16 unless q8_0 is needed to fit
    workers: tuple[str, ...] = ()  # "host:port" of `localr1 worker`s whose devices join the local ones
    speculate: str | None = None  # one of SPECULATE_MODES; None: the config's, else DEFAULT_SPECULATE
    draft: str | None = None  # the draft model (a catalog name or a .gguf); None: the config's, else the catalog's

    def validated(self) -> LoadRequest:
        """This request, if every value is in range (else a one-line UsageError naming the option)."""
        limits.ctx(self.ctx)
        limits.threads(self.threads)
        limits.gpu_layers(self.gpu_layers)
        if self.offload not in OFFLOAD_MODES:
            raise UsageError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}")
        limits.bounded("--gpu-experts", self.gpu_experts, 0, limits.MAX_GPU_LAYERS)
        limits.bounded("--parallel", self.parallel, 1, limits.MAX_PARALLEL, hint="Each request needs its own context.")
        if self.ctx is not None:
            limits.ctx(self.ctx * self.parallel, "--ctx times --parallel")
        if self.speculate is not None:
            check_speculate(self.speculate)
        if self.draft is not None and self.speculate == "off":
            raise UsageError("--draft needs speculation", hint="Drop --speculate off, or drop --draft.")
        if self.kv_type is not None:
            from localr1.fit.memory import check_kv_type

            check_kv_type(self.kv_type)
        if self.workers:
            from localr1.engine.rpc import parse_endpoint

            if len(self.workers) > 16:
                raise UsageError("--workers takes at most 16 workers (llama.cpp's limit)")
            for w in self.workers:
                parse_endpoint(w)
        return self

    def for_spec(self, spec: str | None) -> LoadRequest:
        """The same settings for another model (the chat's model picker)."""
        return replace(self, spec=spec)
