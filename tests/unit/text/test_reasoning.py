"""The streaming splitter must give the same result however the text is cut into pieces."""

from __future__ import annotations

import pytest
from reasoning_cases import CASES, EXPECTED_ANSWER, EXPECTED_REASONING, R1_REPLY

from localr1.text.reasoning import ReasoningSplitter, Utf8Stream, split_text, strip_reasoning


def _run(pieces, opened):
    return split_text(pieces, opened=opened)


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), CASES)
def test_whole_text(text, opened, reasoning, answer):
    assert _run([text], opened) == (reasoning, answer)


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), CASES)
def test_split_at_every_offset(text, opened, reasoning, answer):
    for i in range(len(text) + 1):
        assert _run([text[:i], text[i:]], opened) == (reasoning, answer), f"split at {i}"


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), CASES)
def test_split_at_every_pair_of_offsets(text, opened, reasoning, answer):
    n = len(text)
    for i in range(n + 1):
        for j in range(i, n + 1, 3):
            assert _run([text[:i], text[i:j], text[j:]], opened) == (reasoning, answer), (i, j)


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), CASES)
def test_one_character_at_a_time(text, opened, reasoning, answer):
    assert _run(list(text), opened) == (reasoning, answer)


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), CASES)
def test_bytes_split_at_every_offset(text, opened, reasoning, answer):
    data = text.encode("utf-8")
    for i in range(len(data) + 1):
        utf8 = Utf8Stream()
        pieces = [utf8.feed(data[:i]), utf8.feed(data[i:]), utf8.flush()]
        assert all("\ufffd" not in p for p in pieces)
        assert _run(pieces, opened) == (reasoning, answer), f"byte split at {i}"


def test_nothing_shown_is_taken_back():
    """Emitted pieces are final: the concatenation of the stream equals the whole-text result."""
    splitter = ReasoningSplitter()
    seen = {"reasoning": "", "answer": ""}
    for ch in R1_REPLY:
        for channel, text in splitter.feed(ch):
            seen[channel] += text
            assert EXPECTED_REASONING.startswith(seen["reasoning"])
            assert EXPECTED_ANSWER.startswith(seen["answer"])
    for channel, text in splitter.finish():
        seen[channel] += text
    assert (seen["reasoning"], seen["answer"]) == (EXPECTED_REASONING, EXPECTED_ANSWER)


def test_reasoning_state_flags():
    s = ReasoningSplitter(opened=True)
    s.feed("thinking")
    assert s.in_reasoning and s.saw_reasoning and not s.closed_reasoning
    s.feed("</think>done")
    assert s.closed_reasoning and s.state == "answer"
    plain = ReasoningSplitter()
    plain.feed("no reasoning at all")
    assert plain.state == "answer" and not plain.saw_reasoning


def test_utf8_stream_replaces_only_invalid_bytes():
    utf8 = Utf8Stream()
    assert utf8.feed(b"\xe4\xbd") == ""  # first two bytes of 你: held back
    assert utf8.feed(b"\xa0ok") == "你ok"
    assert utf8.feed(b"\xff") == "\ufffd"  # never valid
    assert utf8.feed(b"\xf0\x9f") == ""
    assert utf8.flush() == "\ufffd"  # stream ended inside a character


def test_strip_reasoning():
    assert strip_reasoning("<think>x\n</think>\n\nfinal") == "final"
    assert strip_reasoning("no tags") == "no tags"
