"""The typed events every front end consumes.

An engine turns a prompt into an iterator of these; the CLI, the TUI and the benchmarks only render or
count them. ``Reasoning`` and ``Answer`` carry text deltas; ``Done`` closes every stream, also a stopped
one, with the numbers of the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from localr1.text.thinking import ThinkingReport

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of the model's thinking, and the number of tokens it came from (see ``Answer``). ``forced``:
    text the engine appended to the thinking for a thinking budget (localr1.text.thinking), not the model's."""

    text: str
    tokens: int = 1
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """A piece of the answer, and the number of tokens it came from.

    Engines hand text on at most once per display frame, so one event may hold many tokens. A token that
    shows no text of its own (``</think>``, half of a UTF-8 character) counts with the next piece; the
    exact totals are in ``Done.usage``.
    """

    text: str
    tokens: int = 1


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made in its answer (localr1.text.tools reads it out of the answer's text):
    the call's id, the function's name and its arguments as a JSON object's text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Wall-clock figures of one generation, as the user experiences them."""

    load_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    thinking_s: float = 0.0
    prompt_tokens: int = 0
    decode_tokens: int = 0
    # llama.cpp's own counters for the same run (time spent inside llama_decode), for overhead checks.
    llama_prefill_ms: float = 0.0
    llama_decode_ms: float = 0.0
    llama_decode_calls: int = 0
    sample_ms: float = 0.0  # time spent choosing tokens (localr1's sampler, or llama.cpp's chain with a grammar)
    speculative: Any = None  # what speculative decoding did (engine/speculative.DraftStats: mode, drafted, accepted)

    @property
    def drafts_kept(self) -> str:
        """Speculation's share of drafted tokens kept, for a status line ("" when nothing was drafted)."""
        spec = self.speculative
        if spec is None or not spec.drafted:
            return ""
        return f"{spec.accepted / spec.drafted:.0%} of {spec.drafted:,} drafts kept"

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # The first generated token comes out of the prefill; the decode phase produces the rest.
        n = max(self.decode_tokens - 1, 0)
        return n / self.decode_s if self.decode_s > 0 and n else 0.0


@dataclass(frozen=True)
class Done:
    """The end of a generation."""

    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    reasoning_unfinished: bool = False  # the model was still thinking when it stopped
    thinking: ThinkingReport | None = None  # what a thinking budget did (None: no budget was set)

    def to_dict(self) -> dict:
        out = {
            "finish_reason": self.finish_reason,
            "reasoning_unfinished": self.reasoning_unfinished,
            "usage": {**asdict(self.usage), "total_tokens": self.usage.total_tokens},
            "timings": {
                "load_s": round(self.timings.load_s, 4),
                "prefill_s": round(self.timings.prefill_s, 4),
                "decode_s": round(self.timings.decode_s, 4),
                "thinking_s": round(self.timings.thinking_s, 4),
                "prefill_tokens_per_s": round(self.timings.prefill_tps, 2),
                "decode_tokens_per_s": round(self.timings.decode_tps, 2),
            },
        }
        if self.timings.speculative is not None:
            out["timings"]["speculative"] = self.timings.speculative.to_dict()
        if self.thinking is not None:
            out["thinking_budget"] = self.thinking.to_dict()
        return out


Event = Reasoning | Answer | Done


def collect(events: Iterable[Event]) -> tuple[str, str, Done | None]:
    """A whole generation: (thinking, answer, Done or None if the stream ended without one)."""
    reasoning: list[str] = []
    answer: list[str] = []
    done: Done | None = None
    for event in events:
        if isinstance(event, Reasoning):
            reasoning.append(event.text)
        elif isinstance(event, Answer):
            answer.append(event.text)
        elif isinstance(event, Done):
            done = event
    return "".join(reasoning), "".join(answer), done
