"""The catalog of R1 builds: ``models.toml``, loaded into typed records and validated strictly.

The built-in catalog ships with the package; a ``models.toml`` in the user's config directory adds
entries or replaces built-in ones by name.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from localr1.errors import CatalogError
from localr1.fit.arch import Architecture
from localr1.paths import config_dir

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "title": str,
    "family": str,
    "architecture": str,
    "params_b": (int, float),
    "source_repo": str,
    "gguf_repo": str,
    "default_quant": str,
    "license": str,
    "files": dict,
    "arch": dict,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "aime2024": (int, float),
    "math500": (int, float),
    "gpqa": (int, float),
    "sizes": dict,  # quant -> bytes of the whole build (all split parts), as the Hub lists them
    "sizes_note": str,  # where the sizes come from, and whether they are exact or rounded
    "draft": str,  # the catalog model that drafts for this one (speculative decoding): the same tokenizer
}
_FAMILIES = ("distill", "moe")


_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")


@dataclass(frozen=True)
class CatalogModel:
    name: str
    title: str
    family: str
    architecture: str
    params_b: float
    source_repo: str
    gguf_repo: str
    default_quant: str
    license: str
    files: dict[str, str] = field(default_factory=dict)
    aime2024: float | None = None
    math500: float | None = None
    gpqa: float | None = None
    source: str = "built-in"
    arch: Architecture | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    sizes_note: str | None = None
    draft: str | None = None

    @property
    def quants(self) -> list[str]:
        return list(self.files)

    @property
    def score(self) -> float:
        """Published quality used for ranking: the mean of AIME 2024 and GPQA Diamond pass@1 (what is known)."""
        known = [v for v in (self.aime2024, self.gpqa) if v is not None]
        return sum(known) / len(known) if known else 0.0

    def file_for(self, quant: str | None = None) -> str:
        quant = quant or self.default_quant
        if quant not in self.files:
            raise CatalogError(
                f"{self.name} has no {quant} build in the catalog",
                hint=f"Available: {', '.join(self.files)}.",
            )
        return self.files[quant]


def _entry(name: str, raw: Any, origin: str) -> CatalogModel:
    where = f"{origin}: model {name!r}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a table")
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise CatalogError(f"{where} has unknown field {sorted(unknown)[0]!r}", hint="Check the spelling.")
    for key in _REQUIRED:
        if key not in raw:
            raise CatalogError(f"{where} is missing the field {key!r}")
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key in raw and (not isinstance(raw[key], typ) or isinstance(raw[key], bool)):
            raise CatalogError(f"{where}: {key} has the wrong type ({type(raw[key]).__name__})")
    if raw["family"] not in _FAMILIES:
        raise CatalogError(f"{where}: family must be one of {', '.join(_FAMILIES)}")
    files = raw["files"]
    if not files or not all(
        isinstance(k, str) and isinstance(v, str) and v.endswith(".gguf") for k, v in files.items()
    ):
        raise CatalogError(f"{where}: files must map quant names to .gguf file names")
    for file in files.values():
        if file.startswith("/") or ".." in Path(file).parts:
            raise CatalogError(f"{where}: file {file!r} must be a relative path inside the repo")
    if raw["default_quant"] not in files:
        raise CatalogError(f"{where}: default_quant {raw['default_quant']!r} is not among its files")
    for key in ("gguf_repo", "source_repo"):  # names that become folders in the Hugging Face cache
        if not _REPO_RE.fullmatch(raw[key]) or ".." in raw[key]:
            raise CatalogError(
                f"{where}: {key} {raw[key]!r} must be 'owner/name'", hint="e.g. unsloth/DeepSeek-R1-GGUF"
            )
    for quant, file in files.items():
        if any(ord(ch) < 32 for ch in file + quant) or "\\" in file:
            raise CatalogError(f"{where}: file {file!r} must be a plain relative path inside the repo")
    sizes = raw.get("sizes", {})
    for quant, size in sizes.items():
        if quant not in files:
            raise CatalogError(f"{where}: sizes names {quant!r}, which is not among its files")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < 1 << 50:
            raise CatalogError(f"{where}: sizes.{quant} must be a positive number of bytes, not {size!r}")
    arch = Architecture.from_dict(raw["arch"], where)
    if arch.arch != raw["architecture"]:
        raise CatalogError(f"{where}: architecture {raw['architecture']!r} differs from arch.arch {arch.arch!r}")
    return CatalogModel(name=name, source=origin, **{**raw, "params_b": float(raw["params_b"]), "arch": arch})


def parse_catalog(text: str, origin: str) -> dict[str, CatalogModel]:

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{origin} is not valid TOML: {exc}") from exc
    models = data.get("models")
    if set(data) - {"models"} or not isinstance(models, dict):
        raise CatalogError(f'{origin} must contain only [models."NAME"] tables')
    return {name: _entry(name, raw, origin) for name, raw in models.items()}


def _check_drafts(catalog: dict[str, CatalogModel]) -> None:
    """A model's ``draft`` names another model of the catalog, with the same vocabulary size within llama.cpp's
    slack of 128 tokens (the file's tokens are compared when both are loaded)."""
    for model in catalog.values():
        if model.draft is None:
            continue
        draft = catalog.get(model.draft)
        where = f"{model.source}: model {model.name!r}"
        if draft is None or draft.name == model.name:
            raise CatalogError(f"{where}: draft {model.draft!r} is not another model of the catalog")
        if model.arch and draft.arch and abs(model.arch.n_vocab - draft.arch.n_vocab) > 128:
            raise CatalogError(f"{where}: draft {model.draft!r} has another vocabulary ({draft.arch.n_vocab:,} tokens)")


@functools.lru_cache(maxsize=4)
def _load(user_file: Path | None) -> dict[str, CatalogModel]:
    text = resources.files("localr1").joinpath("models.toml").read_text(encoding="utf-8")
    catalog = parse_catalog(text, "built-in models.toml")
    if user_file is not None and user_file.exists():
        try:
            text = user_file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(
                f"{user_file} is not UTF-8 text (byte {exc.start:,})", hint="Save it as UTF-8, or delete it."
            ) from None
        except OSError as exc:
            raise CatalogError(f"cannot read {user_file}: {exc.strerror}", hint="Fix or delete the file.") from None
        catalog.update(parse_catalog(text, str(user_file)))
    _check_drafts(catalog)
    return catalog


def load_catalog(*, user_file: Path | None = None, include_user: bool = True) -> dict[str, CatalogModel]:
    if include_user and user_file is None:
        user_file = config_dir() / "models.toml"
    return dict(_load(user_file if include_user else None))


def split_name(spec: str) -> tuple[str, str | None]:
    """``r1:14b:Q5_K_M`` -> (``r1:14b``, ``Q5_K_M``); ``r1:14b`` -> (``r1:14b``, None)."""
    parts = spec.split(":")
    if len(parts) == 3:
        return f"{parts[0]}:{parts[1]}", parts[2]
    return spec, None
