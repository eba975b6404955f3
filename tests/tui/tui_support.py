"""Scripts and a clock for the chat app tests."""

from __future__ import annotations

R1_REPLY = ["<think>\n", "Let me", " think", " about", " it.", "</think>", "\n\nThe answer is ", "\\boxed{4}", "."]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
