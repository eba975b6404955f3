"""Scripts and a clock for the chat app tests."""

from __future__ import annotations

R1_REPLY = ["<think>\n", "Let me", " think", " about", " it.", "</think>", "\n\nThe answer is ", "\\boxed{4}", "."]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    """Let the app run until ``condition()`` holds: a loaded CI machine takes longer than any fixed pause, and a
    snapshot taken early shows a half-drawn screen instead of saying what it waited for."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.02)
