"""EventAssembler: token bytes to events, one token at a time or several at once (the engine coalesces)."""

from __future__ import annotations

import itertools
import random

import pytest
from reasoning_cases import CASES

from localr1.engine.base import EventAssembler
from localr1.events import Answer, Reasoning


def _tokens(text: str, rng: random.Random) -> list[bytes]:
    """The text's bytes cut into token-like pieces of 1-6 bytes (multi-byte characters get cut too)."""
    data, out, i = text.encode(), [], 0
    while i < len(data):
        n = rng.randint(1, 6)
        out.append(data[i : i + n])
        i += n
    return out


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run(groups: list[list[bytes]], opened: bool, *, many: bool):
    """Feed runs of tokens with feed_many, or the same tokens one by one; the clock moves between runs."""
    clock = _Clock()
    asm = EventAssembler(opened=opened, clock=clock)
    events, calls = [], []
    for group in groups:
        if many:
            calls.append(asm.feed_many(group))
            events += calls[-1]
        else:
            for piece in group:
                events += asm.feed(piece)
        clock.t += len(group) + 1
    events += asm.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e.text for e in events if isinstance(e, Answer))
    thinking_s = asm.thinking_s
    # every token read is carried by some event, or still waits for text (a tag at the very end)
    shown = (
        sum(e.tokens for e in events if isinstance(e, Reasoning)),
        sum(e.tokens for e in events if isinstance(e, Answer)),
    )
    assert sum(shown) + asm._uncounted == asm.completion_tokens
    return reasoning, answer, asm.completion_tokens, asm.reasoning_tokens, thinking_s, shown, calls


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), CASES)
def test_feed_many_equals_feeding_each_token(text, opened, reasoning, answer):
    rng = random.Random(text)
    for _ in range(40):
        tokens = _tokens(text, rng)
        groups, i = [], 0
        while i < len(tokens):  # random runs, empty ones included
            n = rng.choice([0, 1, 2, 3, 5, 8, 40])
            groups.append(tokens[i : i + n])
            i += n
        one = _run(groups, opened, many=False)
        many = _run(groups, opened, many=True)
        assert one[:5] == many[:5], groups
        assert (one[0], one[1]) == (reasoning, answer)
        # within one call, consecutive pieces of one channel come merged into one event
        for call in many[6]:
            assert all(type(a) is not type(b) for a, b in itertools.pairwise(call))


def test_feed_many_counts_reasoning_tokens_up_to_the_closing_tag():
    tokens = [b"a", b" b", b"</", b"think", b">", b"\n\n", b"x", b"y"]
    asm = EventAssembler(opened=True)
    events = asm.feed_many(tokens[:3]) + asm.feed_many(tokens[3:])
    assert asm.completion_tokens == 8 and asm.reasoning_tokens == 5
    # the tag and the blank line show no text: their tokens go with the answer's first piece
    assert events == [Reasoning("a b", tokens=2), Answer("xy", tokens=6)]


def test_feed_many_of_nothing_is_nothing():
    asm = EventAssembler(opened=True)
    assert asm.feed_many([]) == [] and asm.completion_tokens == 0
