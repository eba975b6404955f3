"""Speculative decoding: guess a few tokens cheaply, check them all in one decode, keep the target's own
distribution exactly.

A decode step of a large model costs about the same for one token as for a few (on a GPU, and on a CPU
while the weights, not the arithmetic, are the bottleneck). So a *drafter* proposes the next tokens
``d1..dk`` and the engine decodes ``[t, d1..dk]`` at once: row ``i`` of that batch's logits is the target's
distribution ``p`` for the token after ``d_i``, as if ``d1..d_i`` had been decoded one by one. Each draft is
then accepted or rejected in order by the standard rule (Leviathan et al. 2023, Chen et al. 2023):

    accept d with probability min(1, p(d) / q(d)); else draw from the residual max(0, p - q), normalised,

where ``q`` is the distribution the draft was drawn from. The token that comes out of that rule is, exactly, a
draw from ``p``, whatever ``q`` is: so speculation changes the speed, never the text's distribution. After a
rejection the rest of the drafts leave the KV cache; after ``k`` acceptances the last row gives one more
token for free.

Two kinds of drafts:

- A *point mass* (``q = δ_d``: an n-gram's continuation, a draft model's argmax). Then the rule is: draw
  ``x`` from ``p`` with the request's own sampler and accept ``d`` exactly when ``x == d`` (accepted with
  probability p(d); otherwise ``x`` is a draw from ``p`` without ``d``, which is the residual). The sampler
  is called once per emitted token, as in plain decoding, so a seeded request draws the same random numbers
  with speculation as without, grammars included: the tokens are the same except where llama.cpp's kernels,
  which round a batch of tokens differently from one token (by up to ~0.1 of a logit on SmolLM2's Q4_1 on
  this CPU), tip a near-tie the other way. The distribution is the model's as llama.cpp computes it.
- A *distribution* (a draft model sampling at the request's temperature): :func:`accept` applies the rule
  to explicit sparse distributions (``NucleusSampler.distribution``).

What is drafted: :class:`NgramDrafter` continues the longest recent n-gram of the context (the prompt and
what was generated) — R1 restates equations, sub-results and, in the answer, its thinking — and
``engine/draft_model.py`` runs a small model with the same vocabulary. :class:`DraftLength` adapts the draft
length to the measured acceptance and switches drafting off for a while where it does not pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from localr1.fit.request import SPECULATE_MODES

if TYPE_CHECKING:
    import numpy as np

# Imported inside the functions that use them: numpy (the engine imports it while a model loads).

MODES = SPECULATE_MODES
NGRAM_MAX, NGRAM_MIN = 4, 2  # the n-grams looked up, longest first
MAX_DRAFT = 16  # tokens drafted per step at most


def accept(
    p: tuple[np.ndarray, np.ndarray], q: tuple[np.ndarray, np.ndarray], draft: int, rng: np.random.Generator
) -> tuple[bool, int]:
    """The standard rule for a draft ``draft`` drawn from ``q``, with the target's ``p``: (accepted, token).

    ``p`` and ``q`` are sparse: (token ids, probabilities), each id once. The token is ``draft`` when
    accepted, else a draw from ``max(0, p - q)`` normalised (never ``draft``: there ``q >= p``)."""
    import numpy as np

    p_ids, p_probs = p
    q_ids, q_probs = q
    p_d = float(p_probs[p_ids == draft].sum())
    q_d = float(q_probs[q_ids == draft].sum())
    if q_d <= 0.0:  # the draft could not have been drawn from q: judge it by p alone (q taken as δ_d)
        q_ids, q_probs, q_d = np.array([draft]), np.array([1.0]), 1.0
    if p_d >= q_d or rng.random() * q_d < p_d:
        return True, draft
    # residual: p - q on p's support (where q has mass p does not, the difference is negative: 0)
    q_on_p = np.zeros(len(p_ids))
    where = {int(t): i for i, t in enumerate(p_ids)}
    for t, pr in zip(q_ids.tolist(), q_probs.tolist(), strict=True):
        i = where.get(t)
        if i is not None:
            q_on_p[i] = pr
    residual = np.maximum(p_probs - q_on_p, 0.0)
    total = float(residual.sum())
    if total <= 0.0:  # p == q up to rounding: the draft is as good as any draw
        return True, draft
    cum = np.cumsum(residual)
    i = min(int(np.searchsorted(cum, rng.random() * total, side="right")), len(cum) - 1)
    while residual[i] == 0.0:  # rounding at the end of the cumulative sum
        i -= 1
    return False, int(p_ids[i])


class NgramDrafter:
    """Drafts from the context itself: the tokens that followed the most recent earlier occurrence of the
    context's last n tokens (n = 4, 3, 2, longest first). Indexing is incremental: each call indexes only
    the tokens added since the last one, a few dictionary writes per token."""

    def __init__(self, n_max: int = NGRAM_MAX, n_min: int = NGRAM_MIN) -> None:
        self.sizes = tuple(range(n_max, n_min - 1, -1))
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> the position just after its latest occurrence
        self._indexed = 0  # positions indexed (an n-gram ending before position i, continued by tokens[i])
        self._tokens: list[int] = []

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens to follow ``tokens`` (the whole context, which grows by appending)."""
        if tokens is not self._tokens or len(tokens) < self._indexed:
            self._tokens, self._index, self._indexed = tokens, {}, 0
        index = self._index
        # every n-gram that ends before position i (< len: it has a continuation) points at i
        for i in range(max(self._indexed, 1), len(tokens)):
            for n in self.sizes:
                if i >= n:
                    index[tuple(tokens[i - n : i])] = i
        self._indexed = max(len(tokens), 1)
        if k <= 0:
            return []
        for n in self.sizes:
            at = index.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if at is not None:
                return tokens[at : at + k]
        return []


@dataclass
class DraftStats:
    """What speculation did in one generation: ``timings.speculative``."""

    mode: str = "off"
    drafted: int = 0
    accepted: int = 0

    def to_dict(self) -> dict:
        rate = self.accepted / self.drafted if self.drafted else 0.0
        return {"mode": self.mode, "drafted": self.drafted, "accepted": self.accepted, "acceptance": round(rate, 4)}


class DraftCost:
    """What a drafted token costs here, measured: ``t1``, a one-token decode (from the plain steps), and
    ``extra``, what each drafted token adds to a step (drafting and the verifying decode). Running averages
    of the machine and the model, so an engine keeps one per drafter across generations and requests."""

    SMOOTHING = 0.3

    def __init__(self) -> None:
        self.t1: float | None = None
        self.extra: float | None = None

    def plain(self, seconds: float) -> None:
        """A one-token decode took ``seconds``."""
        if seconds <= 0:
            return
        a = self.SMOOTHING
        self.t1 = seconds if self.t1 is None else (1 - a) * self.t1 + a * seconds

    def drafting(self, drafted: int, seconds: float) -> bool:
        """A step with ``drafted`` tokens took ``seconds``; whether it could be costed (a plain step was timed)."""
        if self.t1 is None or seconds <= 0:
            return False
        a = self.SMOOTHING
        extra = max(seconds - self.t1, 0.0) / drafted
        self.extra = extra if self.extra is None else (1 - a) * self.extra + a * extra
        return True


class DraftLength:
    """How many tokens to draft next in one generation, from what drafting measured: the acceptance (its
    own) and the cost (a :class:`DraftCost`, shared).

    ``rho`` is a running average of the share of drafted positions the target accepted (a step that accepted
    ``a`` of ``k`` tested ``a + 1`` positions, or ``k`` when all passed). A draft of ``k`` then yields
    ``1 + rho + ... + rho**k`` tokens in ``t1 + k * extra`` seconds: ``k`` is the length that yields most per
    second. Where even the best length would not be 5% faster than plain decoding, drafting stops for a
    while (16 tokens, doubling up to 1,024 while it keeps losing) and then tries again. On a GPU a drafted
    token costs a few percent of a step and long drafts pay; on a small CPU a batch of five costs about three
    one-token steps (measured: docs/performance.md) and only well-predicted text is drafted. Until a plain
    step has been timed nothing is drafted (a cold start decides nothing)."""

    SMOOTHING = 0.3
    FIRST_PAUSE, LONGEST_PAUSE = 16, 1024
    MARGIN = 1.05  # draft only where the estimate promises at least this speed-up (it is itself measured)

    def __init__(self, longest: int = MAX_DRAFT, start: int = 4, cost: DraftCost | None = None) -> None:
        self.longest = longest
        self.start = self.k = min(start, longest)
        self.cost = cost if cost is not None else DraftCost()
        self._hits = self._tries = 0.0  # accepted / tested positions (running averages): rho
        self.pause = 0  # tokens left without drafting
        self.next_pause = self.FIRST_PAUSE

    @property
    def t1(self) -> float | None:
        return self.cost.t1

    @property
    def extra(self) -> float | None:
        return self.cost.extra

    @property
    def rho(self) -> float:
        return self._hits / self._tries if self._tries else 0.0

    def length(self) -> int:
        """The draft length for the next step (0: do not draft now)."""
        if self.t1 is None:
            return 0
        if self.pause > 0:
            self.pause -= 1
            return 0 if self.pause else max(self.k, self.start)  # after a pause: try again
        return self.k

    def plain(self, seconds: float) -> None:
        """A one-token decode took ``seconds``."""
        self.cost.plain(seconds)

    def speed_up(self, k: int) -> float:
        """The expected tokens per second of drafting ``k``, over plain decoding's."""
        rho = min(self.rho, 0.999)
        tokens = (1 - rho ** (k + 1)) / (1 - rho)
        return tokens * self.t1 / (self.t1 + k * self.extra)

    def verified(self, drafted: int, accepted: int, seconds: float) -> None:
        """A step drafted ``drafted`` tokens, ``accepted`` of them were kept, and it took ``seconds`` (drafting
        and the verifying decode)."""
        if drafted <= 0:
            return
        a = self.SMOOTHING
        tested = accepted + (accepted < drafted)
        self._hits = (1 - a) * self._hits + a * accepted
        self._tries = (1 - a) * self._tries + a * tested
        if not self.cost.drafting(drafted, seconds):
            return
        best = max(range(1, self.longest + 1), key=self.speed_up)
        self.k = best
        if self.speed_up(best) < self.MARGIN:
            self.pause, self.next_pause = self.next_pause, min(self.next_pause * 2, self.LONGEST_PAUSE)
        else:
            self.next_pause = self.FIRST_PAUSE


def draft_costs() -> dict[str, DraftCost]:
    """A :class:`DraftCost` per drafter, for an engine to keep across generations (and, in serve, across
    the requests decoding together); each generation measures its own acceptance."""
    return {"ngram": DraftCost(), "draft": DraftCost()}


class Speculator:
    """One generation's drafting: the n-gram drafter and/or a draft model (``propose(tokens, k, sampling)``
    -> (drafts, their distributions or None)), each with its own :class:`DraftLength` over the engine's
    :class:`DraftCost` (or fresh ones), and the counts."""

    def __init__(self, mode: str, *, model=None, sampling=None, costs: dict[str, DraftCost] | None = None) -> None:
        self.stats = DraftStats(mode=mode)
        self.ngram = NgramDrafter() if mode in ("ngram", "auto") else None
        self.model = model if mode in ("draft", "auto") else None
        self.sampling = sampling
        costs = costs if costs is not None else draft_costs()
        self._lengths = {name: DraftLength(cost=cost) for name, cost in costs.items()}
        self._source: str | None = None  # who drafted the tokens being verified

    @property
    def active(self) -> bool:
        return self.ngram is not None or self.model is not None

    def propose(self, tokens: list[int], room: int) -> tuple[list[int], list | None]:
        """Drafts to follow ``tokens`` (the context, ending with the token about to be decoded), at most
        ``room``; their distributions when a draft model sampled them (None: point masses)."""
        self._source = None
        if room <= 0:
            return [], None
        if self.ngram is not None:
            k = min(self._lengths["ngram"].length(), room)
            drafts = self.ngram.propose(tokens, k)  # (k = 0 still indexes the new tokens)
            if drafts:
                self._source = "ngram"
                return drafts, None
        if self.model is not None:
            k = min(self._lengths["draft"].length(), room)
            if k:
                drafts, dists = self.model.propose(tokens, k, self.sampling)
                if drafts:
                    self._source = "draft"
                    return drafts, dists
        return [], None

    def verified(self, drafted: int, accepted: int, seconds: float) -> None:
        """What became of the last proposal (``drafted`` 0: a plain step, which times a one-token decode)."""
        if not drafted or self._source is None:
            for length in self._lengths.values():
                length.plain(seconds)
            return
        self.stats.drafted += drafted
        self.stats.accepted += accepted
        self._lengths[self._source].verified(drafted, accepted, seconds)
