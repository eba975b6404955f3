"""The errors localr1 reports to users.

Every error carries a one-line ``message`` (what happened) and an optional ``hint`` (what to do about
it). The CLI prints them as one line each, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.


class LocalR1Error(Exception):
    """Base class: an error a user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LocalR1Error):
    """The command line asked for something that cannot be done (empty question, bad option value)."""

    exit_code = 2


class ModelNotFoundError(LocalR1Error):
    """No model by that path or name, or no model at all."""


class InvalidModelFileError(LocalR1Error):
    """The file exists but is not a usable GGUF model (wrong magic, truncated, corrupt header)."""


class CatalogError(LocalR1Error):
    """models.toml (built-in or the user's) is malformed."""


class ModelTooBigError(LocalR1Error):
    """No plan fits the model (or any model) into this machine's memory."""


class DownloadError(LocalR1Error):
    """A download failed, was refused, or produced a file that does not match the Hub's hash."""


class ConfigError(LocalR1Error):
    """The user's config file is malformed."""


class TemplateError(LocalR1Error):
    """The model's chat template failed to render or tried to leave the sandbox."""


class EngineError(LocalR1Error):
    """llama.cpp failed while loading or running a model."""


class ModelLoadError(EngineError):
    """llama.cpp could not load the model (out of memory, unsupported architecture, ...)."""


class OutOfMemoryError(ModelLoadError):
    """The model or its context did not fit in the memory llama.cpp could allocate (the loader then retries
    with fewer GPU layers or a smaller context)."""


class ContextOverflowError(EngineError):
    """The prompt does not fit in the context window."""


class WorkerError(EngineError):
    """A `localr1 worker` that cannot be used: unreachable, not a worker at all, or another protocol version."""

    exit_code = 3  # as for a worker lost mid-reply: the run cannot go on without it


class BackendMissingError(EngineError):
    """The llama.cpp Python binding is not installed or cannot be imported."""


class DiskError(LocalR1Error):
    """The filesystem refused: no space left, a read-only or forbidden folder, a file where a folder belongs."""


def from_os_error(exc: OSError) -> LocalR1Error | None:
    """The one-line error for an ``OSError`` a user can fix (full disk, permissions, ...); None for the rest."""
    import errno

    where = exc.filename if exc.filename is not None else "a file"
    reasons = {
        errno.ENOSPC: ("no space left on the device while writing {where}", "Free some space and run it again."),
        errno.EDQUOT: ("the disk quota is exhausted while writing {where}", "Free some space and run it again."),
        errno.EROFS: ("{where} is on a read-only filesystem", "Choose a writable folder."),
        errno.EACCES: ("permission denied: {where}", "Choose a folder you can write to, or fix its permissions."),
        errno.EPERM: ("operation not permitted: {where}", "Choose a folder you can write to, or fix its permissions."),
        errno.ENOTDIR: (
            "a file stands where a folder is needed: {where}",
            "Move that file away, or choose another folder.",
        ),
        errno.EISDIR: ("{where} is a folder, not a file", "Name a file."),
        errno.EEXIST: ("{where} exists already, and is not a folder", "Move it away, or choose another folder."),
        errno.ENAMETOOLONG: ("the name is too long: {where}", "Use a shorter name."),
        errno.EMFILE: ("too many open files", "Raise the limit (ulimit -n) and run it again."),
        errno.ENOENT: ("no such file or folder: {where}", "Check the path; a folder to write in must exist."),
    }
    if exc.errno not in reasons:
        return None
    message, hint = reasons[exc.errno]
    return DiskError(message.format(where=where), hint=hint)


class BackendBuildError(LocalR1Error):
    """A llama.cpp backend cannot be built here (a missing toolchain piece) or its build failed."""
