"""What the planner chooses from: catalog builds (downloaded or not) and GGUF files on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localr1.errors import InvalidModelFileError
from localr1.fit.arch import SUPPORTED, Architecture
from localr1.fit.capacity import Candidate
from localr1.fit.memory import WeightLayout
from localr1.fit.planner import NoPlanError, choose
from localr1.fit.quant_rules import has_rules
from localr1.fit.quant_types import BITS_PER_WEIGHT, QUANT_QUALITY
from localr1.models.catalog import CatalogModel
from localr1.models.gguf_info import GGUFInfo, inspect_model
from localr1.models.resolve import LocalModel, find_catalog_file


def quality(model: CatalogModel | None, quant: str) -> float:
    if model is None:
        return 0.0
    return model.score * QUANT_QUALITY.get(quant.upper(), 0.9)


def from_file(path: Path, header: GGUFInfo | None = None, local: LocalModel | None = None) -> Candidate:
    """A candidate with exact weights from the file's header."""
    header = header or inspect_model(path)
    arch = Architecture.from_gguf(header.metadata)
    if arch.arch not in SUPPORTED and not (arch.n_layer and arch.n_head):
        raise InvalidModelFileError(f"{path.name}: cannot plan for architecture {arch.arch!r}")
    model = local.catalog if local else None
    quant = (local.quant if local and local.quant else None) or header.quant_name
    name = model.name if model else path.name
    weights = WeightLayout.from_gguf(header.tensors, arch.n_layer)
    return Candidate(name, quant, arch, weights, quality(model, quant), path, exact=True)


def from_catalog(catalog: dict[str, CatalogModel], *, include_local: bool = True) -> list[Candidate]:
    out = []
    for model in catalog.values():
        if model.arch is None:
            continue
        for quant in model.quants:
            path = find_catalog_file(model, quant) if include_local else None
            if path is not None:
                try:
                    out.append(from_file(path, local=LocalModel(path, f"{model.name}:{quant}", model, quant)))
                    continue
                except InvalidModelFileError:
                    pass  # a broken download: plan as if it were not there
            if not has_rules(quant) and quant.upper() not in BITS_PER_WEIGHT:
                continue
            weights = WeightLayout.from_arch(model.arch, quant)
            listed = quant in model.sizes
            if listed:  # the size the Hub lists: the download and the memory it takes
                weights = weights.scaled_to(model.sizes[quant])
            out.append(Candidate(model.name, quant, model.arch, weights, quality(model, quant), listed=listed))
    return out


@dataclass(frozen=True)
class ModelFit:
    """One catalog model on one machine: its best plan, or why there is none."""

    model: object  # catalog.CatalogModel
    plan: object | None  # planner.Plan
    downloaded: list[str]  # quants on disk
    best_slow_tps: float | None = None  # no plan because too slow: the best speed any build reached


def catalog_fits(catalog: dict, hw) -> list[ModelFit]:
    """Every catalog model's best plan on ``hw`` (what `models` lists and the chat's model picker offers)."""

    out = []
    for name, model in catalog.items():
        pool = from_catalog({name: model})
        downloaded = [c.quant for c in pool if c.path is not None]
        try:
            out.append(ModelFit(model, choose(pool, hw), downloaded))
        except NoPlanError as exc:
            speeds = [a.decode_tps for a in exc.attempts if not a.ok and a.decode_tps is not None]
            out.append(ModelFit(model, None, downloaded, max(speeds) if speeds else None))
    return out
