"""The tool-call parser gives the same content and calls however the answer is cut into pieces."""

from __future__ import annotations

import json

import pytest

from localr1.events import ToolCall
from localr1.text.tools import (
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    SEP,
    Tool,
    ToolCallParser,
    calls_text,
    describe,
    parse_call,
    split_calls,
)


def call(name: str, args: str) -> str:
    return f"{CALL_BEGIN}function{SEP}{name}\n```json\n{args}\n```{CALL_END}"


WEATHER = call("get_weather", '{"city": "Paris"}')
CODE = call("run_code", json.dumps({"code": "```python\nprint({'a': 1})\n```", "note": "} ] ``` {"}))
# an end token inside an argument's string is not the call's end
TRICKY = call("echo", json.dumps({"text": f"say {CALL_END} and {CALLS_END}"}))

CASES = [
    # (answer text, content, [(name, arguments as a dict)])
    ("Plain answer, no calls.", "Plain answer, no calls.", []),
    (f"{CALLS_BEGIN}{WEATHER}{CALLS_END}", "", [("get_weather", {"city": "Paris"})]),
    (
        f"Let me check.\n\n{CALLS_BEGIN}{WEATHER}{CODE}{CALLS_END}",
        "Let me check.\n\n",
        [
            ("get_weather", {"city": "Paris"}),
            ("run_code", json.loads(CODE.split("```json\n")[1].rsplit("\n```", 1)[0])),
        ],
    ),
    (
        f"{CALLS_BEGIN}{WEATHER}\n{TRICKY}{CALLS_END} done",
        " done",
        [("get_weather", {"city": "Paris"}), ("echo", {"text": f"say {CALL_END} and {CALLS_END}"})],
    ),  # fmt: skip
    # the spellings models write besides the vocabulary's tokens
    (
        "<｜tool_calls_begin｜><｜tool_call_begin｜>function<｜tool_sep｜>f\n```json\n{}\n```<｜tool_call_end｜>"
        "<｜tool_calls_end｜>",
        "",
        [("f", {})],
    ),
    # arguments without the fence
    (f'{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n{{"x": [1, 2]}}{CALL_END}{CALLS_END}', "", [("f", {"x": [1, 2]})]),
    # text that looks like the start of a token but is not one
    ("a <｜tool but not a call <｜tool▁", "a <｜tool but not a call <｜tool▁", []),
]

MALFORMED = [
    # arguments that are not JSON, not an object, no name, a block cut off: all content, as written
    f"{CALLS_BEGIN}{call('f', '{not json')}{CALLS_END}",
    f"{CALLS_BEGIN}{call('f', '[1, 2]')}{CALLS_END}",
    f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}\n```json\n{{}}\n```{CALL_END}{CALLS_END}",
    f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}bad name!\n{{}}{CALL_END}{CALLS_END}",
    f'{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n```json\n{{"a": 1',
    f"{CALLS_BEGIN}garbage{CALLS_END}",
    f"{CALLS_BEGIN}",
]


def run(pieces: list[str], limit: int | None = None) -> tuple[str, list[tuple[str, dict]]]:
    parser = ToolCallParser(limit)
    out: list = []
    for piece in pieces:
        out += parser.feed(piece)
    out += parser.finish()
    assert all(isinstance(p, str | ToolCall) for p in out)
    content = "".join(p for p in out if isinstance(p, str))
    return content, [(p.name, json.loads(p.arguments)) for p in out if isinstance(p, ToolCall)]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_split_at_every_offset(text, content, calls):
    assert run([text]) == (content, calls)
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == (content, calls), f"split at {i}"


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_split_at_pairs_of_offsets_and_one_character_at_a_time(text, content, calls):
    assert run(list(text)) == (content, calls)
    for i in range(0, len(text) + 1, 2):
        for j in range(i, len(text) + 1, 7):
            assert run([text[:i], text[i:j], text[j:]]) == (content, calls), (i, j)


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_block_is_content_as_written(text):
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == (text, []), f"split at {i}"


def test_content_is_not_held_back_longer_than_a_token_could_be():
    parser = ToolCallParser()
    assert parser.feed("Hello <｜to") == ["Hello "]
    assert parser.feed("day") == ["<｜today"]


def test_calls_are_handed_on_as_soon_as_each_is_complete():
    parser = ToolCallParser()
    assert parser.feed(CALLS_BEGIN + WEATHER[:-3]) == []
    [first] = parser.feed(WEATHER[-3:])
    assert first.name == "get_weather" and json.loads(first.arguments) == {"city": "Paris"}
    assert first.id.startswith("call_")


def test_limit_keeps_only_the_first_calls():
    assert run([f"{CALLS_BEGIN}{WEATHER}{CODE}{CALLS_END}"], limit=1)[1] == [("get_weather", {"city": "Paris"})]


def test_history_text_parses_back():
    calls = [ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "f", "{}")]
    content, parsed = split_calls(calls_text(calls))
    assert content == "" and [(c.name, c.arguments) for c in parsed] == [(c.name, c.arguments) for c in calls]


def test_parse_call_refuses_another_kind():
    assert parse_call(f"python{SEP}f\n{{}}") is None
    assert parse_call(f"function{SEP}f\n{{}}").name == "f"


def test_description_names_every_tool_and_the_format():
    text = describe([Tool("get_weather", "The weather in a city", {"type": "object"}), Tool("now")])
    assert "### get_weather" in text and "Description: The weather in a city" in text and "### now" in text
    assert CALLS_BEGIN in text and CALLS_END in text and '"properties": {}' in text
