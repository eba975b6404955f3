"""From what the user typed (a path, a catalog name, or nothing) to a GGUF file on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from localr1.config import Config
from localr1.errors import ModelNotFoundError
from localr1.models.catalog import CatalogModel, load_catalog, split_name
from localr1.models.gguf_info import split_siblings
from localr1.paths import models_dir


@dataclass(frozen=True)
class LocalModel:
    path: Path
    name: str  # catalog name, or the file name
    catalog: CatalogModel | None = None
    quant: str | None = None


def hf_hub_cache() -> Path:
    """The Hugging Face cache, found the way huggingface_hub finds it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = (
        os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return Path(hf_home) / "hub"


def download_hint(model: CatalogModel, quant: str | None) -> str:
    """The command that fetches a catalog build."""
    return f"localr1 pull {model.name}:{quant or model.default_quant}"


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".gguf") or os.sep in spec or spec.startswith(".") or Path(spec).exists()


def _first_shards(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*.gguf") if p.is_file())
    return [p for p in files if split_siblings(p)[0] == p]


def find_catalog_file(model: CatalogModel, quant: str) -> Path | None:
    rel = model.file_for(quant)
    candidates = [models_dir() / rel, models_dir() / Path(rel).name]
    repo_dir = hf_hub_cache() / ("models--" + model.gguf_repo.replace("/", "--")) / "snapshots"
    if repo_dir.is_dir():
        candidates += [snap / rel for snap in sorted(repo_dir.iterdir(), reverse=True)]
    for path in candidates:
        if path.is_file():
            return path
    return None


def local_models(catalog: dict[str, CatalogModel] | None = None) -> list[LocalModel]:
    """Models on disk: catalog builds (in localr1's folder or the HF cache) and loose GGUF files."""
    catalog = load_catalog() if catalog is None else catalog
    found: dict[Path, LocalModel] = {}
    for model in catalog.values():
        for quant in model.quants:
            path = find_catalog_file(model, quant)
            if path is not None:
                found.setdefault(path.resolve(), LocalModel(path, f"{model.name}:{quant}", model, quant))
    for path in _first_shards(models_dir()):
        found.setdefault(path.resolve(), LocalModel(path, path.name))
    # any other GGUF in the Hugging Face cache (pulled as owner/repo:file, or by other tools)
    hub = hf_hub_cache()
    for repo_dir in sorted(hub.glob("models--*--*")) if hub.is_dir() else []:
        repo_id = repo_dir.name[len("models--") :].replace("--", "/", 1)
        snaps = sorted((repo_dir / "snapshots").glob("*"), reverse=True)
        for snap in snaps[:1]:
            for path in _first_shards(snap):
                rel = path.relative_to(snap).as_posix()
                found.setdefault(path.resolve(), LocalModel(path, f"{repo_id}/{rel}"))
    return list(found.values())


def resolve_model(spec: str | None, config: Config, catalog: dict[str, CatalogModel] | None = None) -> LocalModel:
    spec = spec or config.default_model
    if spec:
        return _resolve_spec(spec, catalog)
    models = local_models(catalog)
    if len(models) == 1:
        return models[0]
    if not models:
        raise ModelNotFoundError(
            "no model given and none found on this machine",
            hint="Pass --model PATH.gguf, or download one: " + download_hint(load_catalog()["r1:7b"], None),
        )
    names = ", ".join(m.name for m in models[:4])
    raise ModelNotFoundError(
        f"no model given and {len(models)} are on this machine ({names})",
        hint=f"Choose one with --model, or set default_model in {config.path or 'config.toml'}.",
    )


def check_spec(spec: str, catalog: dict[str, CatalogModel] | None = None) -> None:
    """Fail at once on a name that can never resolve (a missing file, an unknown model or quant), before
    anything slow or full-screen starts. A catalog build that is not downloaded yet passes."""
    if _looks_like_path(spec):
        if not Path(spec).expanduser().exists():
            raise _no_such_file(spec)
        return
    catalog = load_catalog() if catalog is None else catalog
    name, quant = split_name(spec)
    if name not in catalog:
        raise _unknown_model(spec, catalog)
    if quant is not None:
        catalog[name].file_for(quant)  # raises, listing the quants there are


def _no_such_file(spec: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"no such file: {spec}", hint="Check the path, or give a catalog name like r1:7b.")


def _unknown_model(spec: str, catalog: dict[str, CatalogModel]) -> ModelNotFoundError:
    known = ", ".join(sorted(catalog)[:8])
    return ModelNotFoundError(f"unknown model {spec!r}", hint=f"Give a path to a .gguf file, or one of: {known}.")


def _resolve_spec(spec: str, catalog: dict[str, CatalogModel] | None) -> LocalModel:
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise _no_such_file(spec)
        if path.is_dir():
            shards = _first_shards(path)
            if len(shards) != 1:
                raise ModelNotFoundError(
                    f"{spec} is a folder with {len(shards)} GGUF models", hint="Give the file itself."
                )
            path = shards[0]
        return LocalModel(path, path.name)
    catalog = load_catalog() if catalog is None else catalog
    name, quant = split_name(spec)
    model = catalog.get(name)
    if model is None:
        raise _unknown_model(spec, catalog)
    quant = quant or model.default_quant
    path = find_catalog_file(model, quant)
    if path is None:
        raise ModelNotFoundError(
            f"{name} ({quant}) is not downloaded yet",
            hint="Download it with: " + download_hint(model, quant),
        )
    return LocalModel(path, f"{name}:{quant}", model, quant)
