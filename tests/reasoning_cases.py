"""Texts of R1 replies and how they split into reasoning and answer, for the splitter's and the event
assembler's tests (tests/unit/text/test_reasoning.py, tests/unit/engine/test_event_assembler.py)."""

from __future__ import annotations

R1_REPLY = "<think>\nLet me compute 2+2.\n\nIt is 4, since 2<3 and </th is not a tag.\n</think>\n\nThe answer is **4**."
EXPECTED_REASONING = "Let me compute 2+2.\n\nIt is 4, since 2<3 and </th is not a tag."
EXPECTED_ANSWER = "The answer is **4**."

CASES = [
    # (text, opened, reasoning, answer)
    (R1_REPLY, False, EXPECTED_REASONING, EXPECTED_ANSWER),
    (R1_REPLY[len("<think>\n") :], True, EXPECTED_REASONING, EXPECTED_ANSWER),
    ("  \n<think>x</think>y", False, "x", "y"),
    ("Hello, <think> is just text here.", False, "", "Hello, <think> is just text here."),
    ("\n\nPlain answer.\n", False, "", "Plain answer.\n"),
    ("still thinking when the tokens ran out\n\n", True, "still thinking when the tokens ran out", ""),
    ("<thi", False, "", "<thi"),
    ("r</think>a </think> b", True, "r", "a </think> b"),
    ("<think>\n\n</think>\n\nEmpty thought.", False, "", "Empty thought."),
    ("<think>\nr</think>a", True, "r", "a"),  # a model that re-opens a block the prompt opened
    ("<thinking about it</think>a", True, "<thinking about it", "a"),
    ("ü 你好 😀 </think>\n\n答案: √2 ∉ ℚ", True, "ü 你好 😀 ", "答案: √2 ∉ ℚ"),
]
