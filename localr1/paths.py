"""Where localr1 keeps things (platformdirs), each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

# Imported inside the functions that use them: platformdirs (heavy to import, and not needed by every command).

APP = "localr1"


def _dirs():  # platformdirs is imported on first use only
    from platformdirs import PlatformDirs

    return PlatformDirs(APP, appauthor=False)


def config_dir() -> Path:
    return Path(os.environ.get("LOCALR1_CONFIG_DIR") or _dirs().user_config_dir)


def data_dir() -> Path:
    return Path(os.environ.get("LOCALR1_DATA_DIR") or _dirs().user_data_dir)


def cache_dir() -> Path:
    """What can be rebuilt at any time (parsed model headers)."""
    return Path(os.environ.get("LOCALR1_CACHE_DIR") or _dirs().user_cache_dir)


def models_dir() -> Path:
    """Where models that localr1 makes or that users drop in live (downloads use the Hugging Face cache)."""
    return Path(os.environ.get("LOCALR1_MODELS_DIR") or data_dir() / "models")


def config_file() -> Path:
    return config_dir() / "config.toml"
