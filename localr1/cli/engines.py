"""Opening the engine a command runs: a running server's (--server), or the model loaded here."""

from __future__ import annotations

from localr1.cli.options import remote_engine
from localr1.fit.request import LoadRequest

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.


def open_engine(request: LoadRequest, server: str | None, model: str | None, cancel):
    """The engine a command runs: a running server's (--server), or the model loaded here (planned,
    downloaded if needed). (engine, its label, its path or the server's address)."""
    if server:
        engine = remote_engine(server, model)
        return engine, engine.info.name, server
    from localr1.cli.library import pull_target
    from localr1.config import load_config
    from localr1.loader import open_model

    loaded = open_model(
        request, load_config(), cancel=cancel, fetch=lambda target, off: pull_target(target, off, cancel=cancel)
    )
    return loaded.engine, loaded.label, loaded.path
