"""llama-cpp-python's ctypes bindings, imported without its high-level API.

The ``llama_cpp`` package's ``__init__`` imports its high-level ``Llama`` class, its chat formats and
Jinja2: ~75 ms of every ``ask``'s start for code localr1 never calls (it drives the C API directly). The
package is registered here without running that ``__init__``; its submodules (``llama_cpp.llama_cpp``,
``llama_cpp._ggml``, ...) import as usual, and the first use of anything else (``llama_cpp.Llama``,
``from llama_cpp import *``) runs the real ``__init__`` then, so other code in the process sees the
package it expects.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

# Imported inside the functions that use them: llama_cpp (heavy to import, and not needed by every command).

# Called after the package's own __init__ has run: it installs llama-cpp-python's log callback over
# localr1's, which the engine then puts back.
after_full_import: list[Callable[[], None]] = []


def _register_package() -> None:
    if "llama_cpp" in sys.modules:
        return
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError("No module named 'llama_cpp'")
    package = importlib.util.module_from_spec(spec)  # __path__, __file__, __spec__ set; __init__ not run

    def finish_import(name: str) -> Any:
        # Something wants the package's own namespace: run its __init__ now, once.
        package.__dict__.pop("__getattr__", None)
        spec.loader.exec_module(package)
        for hook in after_full_import:
            hook()
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'llama_cpp' has no attribute {name!r}") from None

    package.__getattr__ = finish_import  # PEP 562: only called for names the module does not have yet
    sys.modules["llama_cpp"] = package


def load_bindings() -> ModuleType:
    """``llama_cpp.llama_cpp`` (the ctypes bindings), loading the shared library on first call."""
    _register_package()
    import llama_cpp.llama_cpp as lib

    return lib


def load_submodule(name: str) -> ModuleType:
    """Another submodule of the package (``_ggml``, ``_ctypes_extensions``) on the same terms."""
    _register_package()
    return importlib.import_module(f"llama_cpp.{name}")
