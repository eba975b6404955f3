"""Stop strings cut the answer at the first match, wherever the pieces split the text."""

from __future__ import annotations

import pytest

from localr1.text.stops import StopScanner

CASES = [
    ("The answer is 4.\nUser: more", ["\nUser:"], "The answer is 4."),
    ("no stop here at all", ["###"], "no stop here at all"),
    ("abcSTOPdefEND", ["END", "STOP"], "abc"),  # the earliest match wins, whichever string it is
    ("aaab", ["aab"], "a"),
    ("", ["x"], ""),
    ("日本語の答え。終わり", ["終わり"], "日本語の答え。"),
]


@pytest.mark.parametrize(("text", "stops", "expected"), CASES)
def test_every_split_gives_the_same_text(text, stops, expected):
    for cut in range(len(text) + 1):
        for cut2 in range(cut, len(text) + 1):
            scanner = StopScanner(stops)
            out = "".join(scanner.feed(p) for p in (text[:cut], text[cut:cut2], text[cut2:])) + scanner.flush()
            assert out == expected, (cut, cut2)
            assert scanner.stopped == (expected != text)


def test_nothing_after_a_stop():
    scanner = StopScanner(["x"])
    assert scanner.feed("axb") == "a"
    assert scanner.feed("more") == "" and scanner.flush() == ""


def test_no_stops_passes_text_through_at_once():
    scanner = StopScanner([])
    assert scanner.feed("abc") == "abc" and scanner.flush() == ""
