"""The user's config file (TOML, in the platformdirs config dir), validated strictly.

Example ``config.toml``::

    default_model = "r1:7b"   # a catalog name or a path to a .gguf file
    ctx = 8192                # context size for ask/chat
    threads = 8               # CPU threads (default: physical cores)
    hide_thinking = false     # chat: hide the thinking blocks entirely
    kv_type = "q8_0"          # KV cache type: f16, q8_0 or q4_0 (default: f16 unless q8_0 is needed to fit)
    speculate = "ngram"       # speculative decoding: off, ngram, draft or auto (the default)
    draft = "r1:1.5b"         # the draft model for speculate = "draft" / "auto" (default: the catalog's)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from localr1 import limits
from localr1.engine.rpc import parse_endpoint
from localr1.errors import ConfigError, UsageError
from localr1.fit.memory import check_kv_type
from localr1.fit.request import check_speculate
from localr1.paths import config_file

_FIELDS: dict[str, type] = {
    "default_model": str, "ctx": int, "threads": int, "gpu_layers": int, "hide_thinking": bool, "kv_type": str,
    "workers": list, "speculate": str, "draft": str,
}  # fmt: skip


def _kv_type(value: str, name: str) -> str:

    return check_kv_type(value, name)


def _workers(value: list, name: str) -> list:

    if len(value) > 16 or not all(isinstance(w, str) for w in value):
        raise UsageError(f'{name} must be a list of at most 16 "host:port" strings')
    for w in value:
        parse_endpoint(w)
    return value


_BOUNDS = {
    "ctx": limits.ctx, "threads": limits.threads, "gpu_layers": limits.gpu_layers, "kv_type": _kv_type,
    "workers": _workers, "speculate": check_speculate,
}  # fmt: skip


@dataclass(frozen=True)
class Config:
    default_model: str | None = None
    ctx: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    hide_thinking: bool = False
    kv_type: str | None = None
    workers: list = field(default_factory=list)  # "host:port" of `localr1 worker`s (ggml RPC)
    speculate: str | None = None
    draft: str | None = None
    path: Path | None = None


def load_config(path: Path | None = None) -> Config:

    path = path or config_file()
    values: dict = {}
    if path.exists():
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", hint="Fix or delete the file.") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        for key, value in values.items():
            if key not in _FIELDS:
                known = ", ".join(_FIELDS)
                raise ConfigError(f"{path}: unknown setting {key!r}", hint=f"Known settings: {known}.")
            expected = _FIELDS[key]
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ConfigError(f"{path}: {key} must be a {expected.__name__}, not {value!r}")
            check = _BOUNDS.get(key)
            if check is not None:
                try:
                    check(value, key)
                except UsageError as exc:
                    raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from None
    env_model = os.environ.get("LOCALR1_MODEL")
    if env_model:
        values["default_model"] = env_model
    return Config(path=path, **values)
