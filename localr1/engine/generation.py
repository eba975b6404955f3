"""One generation's per-token policy: where a token's journey is decided, the same for every engine.

An engine tokenizes, decodes and chooses tokens (the plain engine one at a time, the batched one a row of a
shared batch, the scripted one from its script); for each token it chose it asks a :class:`Generation`
what follows, and does what the answer says:

- ``choose(token, piece)`` -> :class:`Step`: the events to hand on now, whether to put the token into the
  context, a text to append (a thinking budget's transition or "Wait"), or the end (and why).
- ``append(pieces)``: the appended text's tokens, as the engine tokenized them: their events, or None when
  they do not fit in what is left (the generation then ends, "length").
- ``done(reason, timings)``: the last events, ``Done`` included.

What is decided here: the end of generation, the thinking budget (``ThinkingControl``: keep, cut after the
token, drop an early ``</think>`` for "Wait"), the token budget (what the context holds after the prompt,
and ``max_tokens``: appended tokens count), the pieces held back between two hand-offs and the hand-off rate
(at most once per ``interval`` seconds; the first token at once). Stop strings are the server's
(``server/service.py``), applied to the answer's text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from localr1.engine.base import EventAssembler
from localr1.events import Event, FinishReason, Timings
from localr1.text.prompt import Prompt
from localr1.text.reasoning import THINK_CLOSE
from localr1.text.sampling import Sampling
from localr1.text.thinking import TRANSITION, WAIT

# Text moves at display rate, tokens at model rate: a 1,000 token/s model would otherwise spend more on
# Python events than a screen can show (docs/architecture.md, "Text moves at display rate").
STREAM_INTERVAL_S = 1 / 60


@dataclass
class Step:
    """What the engine does after a chosen token."""

    events: list[Event] = field(default_factory=list)  # hand these on now
    decode: bool = False  # put the token into the context
    append: str | None = None  # then append this text (tokenize it and call Generation.append)
    finish: FinishReason | None = None  # then the generation is over


class Generation:
    """One request's decisions, token by token (see the module's docstring)."""

    def __init__(
        self,
        prompt: Prompt,
        sampling: Sampling,
        *,
        room: int,
        close_token: Callable[[], int] | None = None,
        interval: float = STREAM_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``room``: the tokens the context holds after the prompt; ``close_token``: the end-of-thinking
        token's id, asked for only when a thinking budget applies (a model without one cannot have one)."""
        self.assembler = EventAssembler(opened=prompt.opens_thinking)
        self.control = sampling.thinking_control(opened=prompt.opens_thinking)
        # an answer grammar needs the end of the thinking only where the prompt opened one (a model that does
        # not think answers from its first token)
        needs_close = self.control is not None or (sampling.answer_grammar is not None and prompt.opens_thinking)
        self.close_id = close_token() if needs_close and close_token is not None else None
        # past the end of the thinking: an answer grammar applies from here (engine/structured.py)
        self.answering = not prompt.opens_thinking
        self.budget = room if sampling.max_tokens is None else min(room, sampling.max_tokens)
        self.generated = 0  # tokens the model wrote and tokens appended for it
        self.interval, self.clock = interval, clock
        self.held: list[bytes] = []  # pieces not handed on yet
        self.handed_at = float("-inf")
        self.t_last = 0.0  # when the last token was chosen

    @property
    def full(self) -> bool:
        return self.generated >= self.budget

    def choose(self, token: int, piece: bytes | None) -> Step:
        """The engine chose ``token``, whose text is ``piece`` (None: an end-of-generation token)."""
        if piece is None:
            return Step(finish="stop")
        control = self.control
        action = control.step(token == self.close_id) if control is not None and control.thinking else "accept"
        if action == "suppress":  # an early end of thinking: dropped, and "Wait" appended instead
            return Step(self.flush(), append=WAIT)
        if token == self.close_id:
            self.answering = True
        self.generated += 1
        self.t_last = now = self.clock()
        self.held.append(piece)
        if self.full:
            return Step(finish="length")
        if action == "cut":  # the budget is spent: the token, then the end of the thinking, for the model
            return Step(self.flush(), decode=True, append=TRANSITION)
        if now - self.handed_at < self.interval:
            return Step(decode=True)
        self.handed_at = now
        return Step(self.flush(), decode=True)

    def append(self, pieces: list[bytes]) -> list[Event] | None:
        """The appended text's tokens (their pieces): their events (marked forced), or None when they do not
        fit in the budget left (then the generation ends, "length", and nothing is put into the context)."""
        if self.generated + len(pieces) >= self.budget:
            return None
        self.control.forced_tokens += len(pieces)
        self.generated += len(pieces)
        if THINK_CLOSE.encode() in pieces:  # a budget's transition ends the thinking
            self.answering = True
        return self.assembler.feed_forced(pieces)

    def flush(self) -> list[Event]:
        """The pieces held back, as events."""
        events = self.assembler.feed_many(self.held) if self.held else []
        self.held = []
        return events

    def done(self, reason: FinishReason, *, prompt_tokens: int, timings: Timings) -> list[Event]:
        """The last events: what was held back, the assembler's tail, and ``Done``."""
        return [
            *self.flush(),
            *self.assembler.finish(),
            self.assembler.done(reason, prompt_tokens=prompt_tokens, timings=timings, thinking=self.control),
        ]
