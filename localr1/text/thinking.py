"""Thinking budgets: budget forcing, as in "s1: Simple test-time scaling" (Muennighoff et al., 2025).

``--think-budget N``: once the reasoning has N tokens, the engine appends a short transition and the
end-of-thinking delimiter itself, and the model answers. ``--think-min N``: an end-of-thinking delimiter the
model writes earlier is dropped and "Wait" appended instead, so it thinks on (at most ``max_waits`` times).
The appended text is not the model's: engines mark it (``Reasoning.forced``) and count it apart
(``Done.thinking``). This module is the decision alone, token by token; each engine does the appending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from localr1.errors import UsageError
from localr1.text.reasoning import THINK_CLOSE

# s1's wording, after the reasoning the model wrote, then the delimiter R1 uses
TRANSITION = "\n\nConsidering the limited time, I have to give the solution now.\n" + THINK_CLOSE + "\n\n"
WAIT = "\n\nWait"
MAX_WAITS = 3

# reasoning_effort (OpenAI's field, as llama-server and others take it) as thinking budgets, in tokens;
# "minimal" is what OpenAI's newer clients send for the least thinking
EFFORT_BUDGETS = {"minimal": 256, "low": 1024, "medium": 4096, "high": None}

Action = Literal["accept", "cut", "suppress"]


@dataclass
class ThinkingControl:
    """Decides, for each token the model writes while it thinks, whether to keep it, to end the thinking
    after it (the budget is spent), or to drop it and append "Wait" (an early end, under the minimum)."""

    budget: int | None = None
    minimum: int | None = None
    max_waits: int = MAX_WAITS
    thinking: bool = True  # the prompt opened the reasoning (R1's forced "<think>\n")
    tokens: int = 0  # the model's own thinking tokens so far
    waits: int = 0
    cut: bool = False
    forced_tokens: int = 0  # tokens the engine appended

    @property
    def active(self) -> bool:
        return self.thinking and (self.budget is not None or self.minimum is not None)

    def step(self, closes: bool) -> Action:
        """The model wrote a token while thinking; ``closes``: it is the end-of-thinking delimiter."""
        if not self.thinking:
            return "accept"
        if closes:
            if self.minimum is not None and self.tokens < self.minimum and self.waits < self.max_waits:
                self.waits += 1
                return "suppress"
            self.thinking = False
            return "accept"
        self.tokens += 1
        if self.budget is not None and self.tokens >= self.budget:
            self.thinking = False
            self.cut = True
            return "cut"
        return "accept"

    def report(self) -> ThinkingReport:
        return ThinkingReport(self.budget, self.minimum, self.tokens, self.cut, self.waits, self.forced_tokens)


@dataclass(frozen=True)
class ThinkingReport:
    """What a budget did to one generation (in ``Done.thinking``)."""

    budget: int | None
    minimum: int | None
    model_tokens: int  # thinking tokens the model wrote (the forced ones not counted)
    cut: bool  # the budget ended the thinking
    waits: int  # early ends replaced by "Wait"
    forced_tokens: int

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "min": self.minimum,
            "model_tokens": self.model_tokens,
            "cut": self.cut,
            "waits": self.waits,
            "forced_tokens": self.forced_tokens,
        }


def check_budget(budget: int | None, minimum: int | None, *, where: str = "--think-budget") -> None:

    if budget is not None and budget < 1:
        raise UsageError(f"{where} must be at least 1, not {budget}")
    if minimum is not None and minimum < 1:
        raise UsageError(f"--think-min must be at least 1, not {minimum}")
    if budget is not None and minimum is not None and minimum > budget:
        raise UsageError(f"--think-min ({minimum}) is larger than {where} ({budget})")
