"""Structured output after the thinking: JSON, or JSON that follows a schema, for the answer alone.

A grammar over the whole reply would force a reasoning model's thinking into JSON too, and it would stop
reasoning. localr1 chooses every token itself, so the grammar is switched on where the thinking ends: the
tokens before ``</think>`` are drawn as always, the ones after it by llama.cpp's grammar sampler
(``Sampling.answer_grammar``; the engines' ``token_chooser``). A thinking budget applies first, as ever.

The grammars are llama.cpp's own, as llama-cpp-python ships them: its JSON grammar and its JSON-schema-to-GBNF
converter (a translation of llama.cpp's ``json-schema-to-grammar``), rather than a converter of our own. A
schema it cannot handle is a UsageError naming the part (the server's 400).
"""

from __future__ import annotations

import json
from typing import Any

from localr1.engine.bindings import load_submodule
from localr1.errors import UsageError

MAX_SCHEMA_BYTES = 64 << 10  # a schema, as JSON
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays
MAX_GRAMMAR_CHARS = 256 << 10  # what the converter may make of it


def json_grammar() -> str:
    """llama.cpp's grammar for any JSON object (JSON mode)."""
    return load_submodule("llama_grammar").JSON_GBNF


def schema_grammar(schema: Any, where: str = "schema") -> str:
    """The GBNF grammar of a JSON schema (a dict), through llama.cpp's converter; bounded and checked."""
    if not isinstance(schema, dict):
        raise UsageError(f"the {where} must be a JSON object")
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise UsageError(f"the {where} is larger than {MAX_SCHEMA_BYTES >> 10} KiB")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise UsageError(f"the {where} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        grammar = load_submodule("llama_grammar").json_schema_to_gbnf(text)
    except RecursionError:
        raise UsageError(f"the {where} refers to itself too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the converter's own words name the part it cannot handle
        raise UsageError(f"the {where} is not supported: {exc}", hint="Use a simpler JSON schema.") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise UsageError(f"the {where} makes a grammar larger than {MAX_GRAMMAR_CHARS >> 10} KiB")
    return grammar


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level
