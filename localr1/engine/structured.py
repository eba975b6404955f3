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
from collections.abc import Sequence
from typing import Any

from localr1.engine.bindings import load_submodule
from localr1.errors import UsageError
from localr1.text import tools as tools_text
from localr1.text.tools import Tool

MAX_SCHEMA_BYTES = 64 << 10  # a schema, as JSON
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays
MAX_GRAMMAR_CHARS = 256 << 10  # what the converter may make of it


def json_grammar() -> str:
    """llama.cpp's grammar for any JSON object (JSON mode)."""
    return load_submodule("llama_grammar").JSON_GBNF


def schema_grammar(schema: Any, where: str = "schema") -> str:
    """The GBNF grammar of a JSON schema (a dict), through llama.cpp's converter; bounded and checked."""
    text = check_schema(schema, f"the {where}")
    try:
        grammar = _strict_strings(load_submodule("llama_grammar").json_schema_to_gbnf(text))
    except RecursionError:
        raise UsageError(f"the {where} refers to itself too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the converter's own words name the part it cannot handle
        raise UsageError(f"the {where} is not supported: {exc}", hint="Use a simpler JSON schema.") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise UsageError(f"the {where} makes a grammar larger than {MAX_GRAMMAR_CHARS >> 10} KiB")
    return grammar


def check_schema(schema: Any, where: str) -> str:
    """A schema within bounds, as JSON text."""
    if not isinstance(schema, dict):
        raise UsageError(f"{where} must be a JSON object")
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise UsageError(f"{where} is larger than {MAX_SCHEMA_BYTES >> 10} KiB")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise UsageError(f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    return text


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def tool_call_grammar(tools: Sequence[Tool], *, parallel: bool = True, or_answer: dict[str, Any] | None = None) -> str:
    """The GBNF grammar of an answer that is one call (or, with ``parallel``, several) of ``tools``, in
    DeepSeek's tokens, each call's arguments following its function's parameter schema (through llama.cpp's
    converter, as ``schema_grammar``); with ``or_answer``, either that or JSON following that schema."""
    module = load_submodule("llama_grammar")
    converter = module.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    calls = []
    for i, tool in enumerate(tools):
        where = f"the parameter schema of tool {tool.name!r}"
        check_schema(tool.schema, where)
        try:
            schema = converter.resolve_refs(tool.schema, f"tool-{i}")
            args = converter.visit(schema, f"tool-{i}-args")
        except RecursionError:
            raise UsageError(f"{where} refers to itself too deeply") from None
        except Exception as exc:  # noqa: BLE001 - the converter's own words name the part it cannot handle
            raise UsageError(f"{where} is not supported: {exc}", hint="Use a simpler JSON schema.") from None
        head = f"{tools_text.CALL_BEGIN}function{tools_text.SEP}{tool.name}\n```json\n"
        calls.append(f"{_literal(head)} {args} {_literal(chr(10) + '```' + tools_text.CALL_END)}")
    more = ' ( "\\n"? tool-call )*' if parallel else ""  # the templates put a newline between calls
    block = f"{_literal(tools_text.CALLS_BEGIN)} tool-call{more} {_literal(tools_text.CALLS_END)}"
    if or_answer is not None:
        check_schema(or_answer, "the response format's schema")
        answer = converter.visit(converter.resolve_refs(or_answer, "answer"), "answer")
        block = f"( {block} | {answer} )"
    grammar = (
        f"{_strict_strings(converter.format_grammar())}\n"
        f"tool-call ::= {' | '.join(f'( {c} )' for c in calls)}\n"
        f"root ::= [ \\t\\n]{{0,3}} {block}\n"  # R1 writes "\\n\\n" after </think>: no more
    )
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise UsageError(f"the tools' parameters make a grammar larger than {MAX_GRAMMAR_CHARS >> 10} KiB")
    return grammar


# The converter's string characters, as llama-cpp-python ships it, admit raw control characters (a newline
# inside a string), which JSON does not: a random model wrote them and json.loads refused the reply.
# llama.cpp's own converter has since excluded them; so does this.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _strict_strings(grammar: str) -> str:
    return "\n".join(
        _STRICT_CHAR + line[len(_LOOSE_CHAR) :] if line.startswith(_LOOSE_CHAR) else line
        for line in grammar.split("\n")
    )


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)
