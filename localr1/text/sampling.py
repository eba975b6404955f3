"""Sampling settings, with DeepSeek's recommended defaults for R1."""

from __future__ import annotations

from dataclasses import dataclass, field

from localr1.errors import UsageError

# Imports inside functions: `localr1 --help` imports this module and must stay instant, so what a
# command needs (localr1's deeper modules, heavy libraries) is imported when it runs.

# DeepSeek's advice for R1 and its distills: temperature 0.5-0.7 (0.6), top_p 0.95.
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True)
class Sampling:
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0  # 0: off, as DeepSeek's reference settings
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: until the model stops or the context is full
    # llama.cpp GBNF grammar and per-token biases: used to steer output (scripts, tests).
    grammar: str | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # a GBNF grammar for the answer only: the thinking before </think> is free (a JSON schema's, json_schema)
    answer_grammar: str | None = None
    # thinking budgets (localr1.text.thinking): end the reasoning after this many tokens / refuse to end it before
    think_budget: int | None = None
    think_min: int | None = None

    def validate(self) -> Sampling:
        if not 0.0 <= self.temperature <= 5.0:
            raise UsageError(f"temperature {self.temperature} is out of range", hint="Use 0 to 5 (R1: 0.6).")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top-p {self.top_p} is out of range", hint="Use a value in (0, 1] (R1: 0.95).")
        if self.top_k < 0:
            raise UsageError(f"top-k {self.top_k} is negative", hint="Use 0 to turn it off.")
        if not 0.0 <= self.min_p < 1.0:
            raise UsageError(f"min-p {self.min_p} is out of range", hint="Use a value in [0, 1).")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise UsageError(f"--max-tokens must be positive, not {self.max_tokens}")
        if self.grammar and self.answer_grammar:
            raise UsageError("a grammar for the whole reply and one for the answer cannot both be given")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise UsageError(f"seed {self.seed} is out of range", hint="Use 0 to 4294967295.")
        from localr1.text.thinking import check_budget

        check_budget(self.think_budget, self.think_min)
        return self

    def thinking_control(self, *, opened: bool):
        """A ThinkingControl for one generation, or None when no budget is set."""
        if self.think_budget is None and self.think_min is None:
            return None
        from localr1.text.thinking import ThinkingControl

        return ThinkingControl(budget=self.think_budget, minimum=self.think_min, thinking=opened)
