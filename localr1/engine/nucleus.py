"""Exact temperature-then-top-p sampling over a logits vector, in a few NumPy passes and no sort.

DeepSeek's recommended sampling for R1 (temperature 0.6, then top-p 0.95, no top-k) is, by definition:
softmax of the logits divided by the temperature, the *nucleus* = the smallest set of most probable tokens
whose mass is at least ``top_p``, and a draw from the nucleus renormalised. llama.cpp's sampler chain does
this by copying every logit into a candidate array and sorting it (fully, whenever the 256 most probable
tokens hold less than ``top_p`` of the mass). Over R1's 152,064-token vocabulary that costs more than a
whole decode step of a small model.

Here the same distribution comes from rejection sampling, which needs no order at all until a token has
been drawn:

1. ``w = exp((logits - max) / T)``: the top token weighs 1, the total is ``S``. If ``1 / S >= top_p`` the
   top token alone is the nucleus: it is the answer (the common case once a model is sure of itself).
2. Draw a token ``t`` from the *whole* softmax (``u`` uniform in ``[0, S)``, located through sums of
   blocks of 1,024 weights and a cumulative sum of one block).
3. ``t`` is in the nucleus exactly when the tokens ranked before it (larger logit; equal logit and lower
   id) weigh less than ``top_p * S``. That weight is ``S - sum(min(w, w_t)) + w_t * #(logit > logit_t)``
   (two passes, no mask of floats). Keep ``t`` if it is in (and if ``min_p`` keeps it too); otherwise
   draw again.

A token drawn from the softmax and kept only if it is in the nucleus is a draw from the nucleus
renormalised, whatever the nucleus is, so no threshold is ever searched for. At least ``top_p`` of the
mass is kept, so one draw in twenty is redrawn at R1's 0.95. When draws keep missing (a small ``top_p``
or a large ``min_p``), each miss ``r`` also proves that the kept set lies above ``r`` (both the nucleus and
min-p's set are prefixes of the same order), so the draws move to the tokens ranked before ``r``: the
excess mass halves per miss on average, and the result is still exact (the kept set never leaves the
set drawn from).

Most of a real model's vocabulary lies far below the top token: a token more than ``c`` below it in
``z = (logit - max) / T`` weighs less than ``e^-c``. Counting the tokens above a few such cuts (20, 14, 10,
7) bounds the weight of everything below the lowest cut used, so only the tokens above it (the *head*,
when it is a small share of the vocabulary) are weighed, and the rest (the *tail*) is one slot in the
envelope, as heavy as its bound. A draw that lands in that slot, or a decision the bound leaves open,
computes the tail for real (rarely: the bound is at most 1/32 of the head's weight): the result is exact
either way.

``top_k`` picks the k largest logits first (``argpartition``); logit biases are added before everything
(``-inf`` bans a token). Weights are float32, as in llama.cpp's softmax; below float32's normal range
(``e^-87``) they are 0. NumPy's reductions here are ``einsum`` and ``cumsum`` loops, not BLAS: a BLAS
call may wake a pool of threads that would then spin against llama.cpp's own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from localr1.errors import EngineError

BLOCK = 1024  # weights per block when locating a draw
# The head is the tokens with z >= -cut, for the first cut that leaves at most 1/HEAD_SHARE of the vocabulary:
# gathering it costs NumPy a branch per token (np.flatnonzero: 30 us for 1% of R1's vocabulary, 200 us for
# 10%), more than weighing every token (~100 us) unless the head is small. The tail's weight is bounded
# level by level: a token below -cut weighs less than e^-cut.
CUTS = (20.0, 14.0, 10.0, 7.0)
HEAD_SHARE = 64
LOOSE_BOUND = 1 / 32  # a tail bound above this share of the head's weight: weigh every token instead
Z_FLOOR = np.float32(-87.0)  # exp(-87) = 1.65e-38, just above float32's smallest normal number
FLOOR = np.exp(Z_FLOOR)
MISSES_BEFORE_NARROWING = 2  # one miss in twenty is expected at top-p 0.95: redraw before narrowing


class NucleusSampler:
    """Draw token ids from logits as temperature -> top-k -> top-p -> min-p -> weighted draw would.

    The order is llama.cpp's chain as localr1 builds it (bias, top-k, temperature, top-p, min-p, dist), and
    the distribution is the reference one: softmax over ``logits / T``, the smallest set of most probable
    tokens (ties by token id) whose mass reaches ``top_p``, cut to the tokens whose probability is at least
    ``min_p`` times the top one's, renormalised.
    """

    def __init__(
        self,
        n_vocab: int,
        *,
        temperature: float,
        top_p: float = 1.0,
        min_p: float = 0.0,
        top_k: int = 0,
        seed: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
    ) -> None:
        if not temperature > 0:
            raise ValueError("temperature must be positive (greedy decoding needs no sampler)")
        self.n_vocab = n_vocab
        self.inv_t = np.float32(1.0 / temperature)
        self.top_p = min(float(top_p), 1.0)
        self.log_min_p = np.float32(math.log(min_p)) if min_p > 0 else None
        self.top_k = top_k if 0 < top_k < n_vocab else 0
        self.rng = np.random.default_rng(seed)
        bias = {int(t): float(b) for t, b in (logit_bias or {}).items() if 0 <= int(t) < n_vocab and b != 0}
        self._bias_ids = np.fromiter(bias, np.int64, len(bias))
        self._bias_values = np.fromiter(bias.values(), np.float32, len(bias))
        self._biased = np.empty(n_vocab, np.float32) if bias else None
        n = self.top_k or n_vocab
        self._w = np.empty(n, np.float32)  # the head's weights
        self._tmp = np.empty(n, np.float32)
        self._mask = np.empty(n, np.bool_)
        self.draws = 0  # draws made in all (a rejection costs one more): for benchmarks and tests
        self.tails = 0  # tails computed in all: for benchmarks and tests

    @classmethod
    def for_sampling(cls, n_vocab: int, sampling, *, seed: int | None = None) -> NucleusSampler:
        """The sampler of a request's ``Sampling`` (its seed, unless another is given)."""
        return cls(
            n_vocab,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            top_k=sampling.top_k,
            seed=sampling.seed if seed is None else seed,
            logit_bias=sampling.logit_bias,
        )

    def __call__(self, logits: np.ndarray) -> int:
        """One token id from ``logits`` (``n_vocab`` float32 values; read, never written)."""
        logits, ids = self._biased_top_k(logits)
        token = _Step(self, logits).sample()
        return int(token if ids is None else ids[token])

    def _biased_top_k(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logit biases added (in a buffer of its own), then the top k kept: (logits, their token ids, or
        None when all are kept)."""
        if self._biased is not None:
            np.copyto(self._biased, logits)
            self._biased[self._bias_ids] += self._bias_values
            logits = self._biased
        ids = None
        if self.top_k:
            ids = np.argpartition(logits, -self.top_k)[-self.top_k :]
            ids.sort()  # ties keep token-id order, as everywhere else
            logits = logits[ids]
        return logits, ids

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept tokens and their probabilities, explicitly: (ids, float64 probabilities summing to 1),
        most probable first. The distribution ``__call__`` draws from, for speculative decoding's acceptance
        test (``localr1.engine.speculative``), which needs p(token) and the residual p - q.

        Only the tokens the nucleus can hold are sorted: the first set of tokens above a cut (``z >= -7``,
        then 10, 14, 20, everything) whose weight reaches ``top_p`` of the total."""
        logits, top_ids = self._biased_top_k(logits)
        peak = logits.max() if len(logits) else np.float32(-np.inf)
        if not np.isfinite(peak):
            raise EngineError(
                "the model produced no usable logits (NaN, infinite, or every token banned)",
                hint="The model file may be corrupt, or a logit bias bans every token.",
            )
        shift = np.float32(peak * self.inv_t)
        n = len(logits)
        w = self._w[:n]
        total = self._weights(logits, shift, w, may_underflow=True)
        if not math.isfinite(total):
            raise EngineError("the model produced NaN or infinite logits", hint="The model file may be corrupt.")
        temperature = 1.0 / float(self.inv_t)
        limit = self.top_p * total
        cand = None
        for cut in CUTS[::-1]:  # 7, 10, 14, 20: the smallest head that holds the nucleus
            cand = np.flatnonzero(logits >= peak - cut * temperature)
            if self.top_p < 1.0 and float(np.einsum("i->", w[cand])) >= limit:
                break
        else:
            cand = np.flatnonzero(w > 0)
        order = cand[np.lexsort((cand, -logits[cand]))]  # descending logit, ties by token id
        weights = w[order].astype(np.float64)
        before = np.cumsum(weights) - weights
        keep = before < limit if self.top_p < 1.0 else np.ones(len(order), bool)
        keep[0] = True
        if self.log_min_p is not None:
            keep &= logits[order] * self.inv_t - shift >= self.log_min_p
        ids, probs = order[keep], weights[keep]
        probs /= probs.sum()
        return (ids if top_ids is None else top_ids[ids]).astype(np.int64), probs

    def _weights(self, logits: np.ndarray, shift: np.float32, out: np.ndarray, *, may_underflow: bool) -> float:
        """``out = exp(logits / T - shift)`` in float32; returns their sum."""
        np.multiply(logits, self.inv_t, out=out)
        out -= shift  # z: 0 for the top token, exactly
        # exp() is ~14x slower where its result is a float32 subnormal (z in [-103, -87]), which is where a
        # real model puts much of its vocabulary: there z is clamped at -87 (a normal result, FLOOR) and
        # FLOOR taken off again, so those tokens, and banned ones (-inf), weigh exactly 0.
        if may_underflow and len(out) and out.min() < Z_FLOOR:
            np.maximum(out, Z_FLOOR, out=out)
            np.exp(out, out=out)
            out -= FLOOR
        else:
            np.exp(out, out=out)
        return float(np.einsum("i->", out))


class _Step:
    """The sampling of one token: the head (tokens that matter), the tail (computed only if needed)."""

    def __init__(self, sampler: NucleusSampler, logits: np.ndarray) -> None:
        self.s = sampler
        self.logits = logits
        self.tail: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None  # ids, logits, weights, mass

    def sample(self) -> int:
        s, logits = self.s, self.logits
        n = len(logits)
        top = int(logits.argmax())
        peak = logits[top]
        if not np.isfinite(peak):
            raise EngineError(
                "the model produced no usable logits (NaN, infinite, or every token banned)",
                hint="The model file may be corrupt, or a logit bias bans every token.",
            )
        self.shift = shift = np.float32(peak * s.inv_t)
        mask = s._mask[:n]
        head_ids, bound = self._head(logits, float(peak), mask)
        if head_ids is not None:
            head = logits[head_ids]
            n_head = len(head_ids)
            total = s._weights(head, shift, s._w[:n_head], may_underflow=False)
            if bound > LOOSE_BOUND * total:
                head_ids = None
        if head_ids is None:  # weigh every token, no tail
            head, n_head, bound = logits, n, 0.0
            total = s._weights(head, shift, s._w[:n], may_underflow=True)
        self.head_ids = head_ids
        w = s._w[:n_head]
        if not math.isfinite(total):
            raise EngineError("the model produced NaN or infinite logits", hint="The model file may be corrupt.")
        self.head_mass = total
        self.tail_bound = bound
        self.s_lo, self.s_hi = total, total + self.tail_bound  # the whole mass S lies in [s_lo, s_hi]
        if self.s_hi * s.top_p <= 1.0:  # the top token alone holds top_p of the mass
            return top
        if self.s_lo * s.top_p <= 1.0:  # the tail decides whether it does
            self._tail()
            if self.s_lo * s.top_p <= 1.0:
                return top
        return self._draw(head, w)

    def _head(self, logits: np.ndarray, peak: float, mask: np.ndarray) -> tuple[np.ndarray | None, float]:
        """The head's positions (``mask`` left marking them) and a bound on the tail's weight; None if no
        cut leaves a head small enough to gather."""
        n = len(logits)
        temperature = 1.0 / float(self.s.inv_t)
        counts = [n]  # counts[j + 1]: tokens with z >= -CUTS[j]
        for cut in CUTS:
            np.greater_equal(logits, peak - cut * temperature, out=mask)
            counts.append(int(np.count_nonzero(mask)))
            if counts[-1] * HEAD_SHARE <= n:
                break
        else:
            return None, 0.0
        # tokens between two cuts weigh less than e^-(the lower cut); a margin covers float32 rounding
        bound = sum(
            (counts[j] - counts[j + 1]) * math.exp(-cut + 1e-3) for j, cut in enumerate(CUTS[: len(counts) - 1])
        )
        return np.flatnonzero(mask), bound

    # --- the tail, computed at most once, only when a decision needs it ---------------------------------
    def _tail(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        if self.tail is None:
            s = self.s
            s.tails += 1
            ids = np.flatnonzero(~s._mask[: len(self.logits)])
            values = self.logits[ids]
            weights = np.empty(len(ids), np.float32)
            mass = s._weights(values, self.shift, weights, may_underflow=True)
            self.tail = (ids, values, weights, mass)
            self.s_lo = self.s_hi = self.head_mass + mass
        return self.tail

    def _before_limit(self, before: float) -> bool:
        """Whether tokens weighing ``before`` in all leave room in the nucleus: ``before < top_p * S``."""
        p = self.s.top_p
        if before < p * self.s_lo:
            return True
        if before >= p * self.s_hi:
            return False
        self._tail()  # S is needed exactly
        return before < p * self.s_lo

    # --- the draws ---------------------------------------------------------------------------------------
    def _draw(self, head: np.ndarray, head_w: np.ndarray) -> int:
        s = self.s
        ids = self.head_ids  # positions of lv in the logits (None: all of them)
        lv, wv, mass = head, head_w, self.head_mass
        slot = self.tail_bound  # the tail's place in the envelope (0 once the draws moved above it)
        misses = 0
        while True:
            s.draws += 1
            u = s.rng.random() * (mass + slot)
            in_tail = u >= mass
            if in_tail:
                t_ids, t_l, t_w, t_mass = self._tail()
                if u - mass >= t_mass:
                    continue  # the envelope's excess over the real tail: draw again
                i = _locate(t_w, u - mass)
                value = t_l[i]
            else:
                i = _locate(wv, u)
                value = lv[i]
            keep = s.log_min_p is None or value * s.inv_t - self.shift >= s.log_min_p
            if keep and s.top_p < 1.0:
                if in_tail:  # every head token ranks before a tail token
                    before = self.head_mass + _weight_before(t_l, t_w, t_mass, i, s._tmp)
                else:
                    before = _weight_before(lv, wv, mass, i, s._tmp)
                keep = self._before_limit(before)
            if keep:
                if in_tail:
                    return int(t_ids[i])
                return int(i if ids is None else ids[i])
            misses += 1
            if misses >= MISSES_BEFORE_NARROWING and not in_tail:  # the kept set lies before token i
                ahead = lv > value
                ahead[:i] |= lv[:i] == value
                sel = np.flatnonzero(ahead)
                ids = sel if ids is None else ids[sel]
                lv, wv = lv[sel], wv[sel]
                mass = float(np.einsum("i->", wv))
                slot = 0.0


def _weight_before(lv: np.ndarray, wv: np.ndarray, mass: float, i: int, tmp: np.ndarray) -> float:
    """The weight of the tokens ranked before token ``i``: larger logit, or equal logit and lower index.

    Weights rise with logits, so ``sum(min(w, w_i))`` is the weight of the tokens with logit <= logit_i
    plus ``w_i`` for each token above: two passes without a float mask.
    """
    value, weight = lv[i], wv[i]
    t = tmp[: len(wv)]
    np.minimum(wv, weight, out=t)
    above = int(np.count_nonzero(lv > value))
    ties = int(np.count_nonzero(lv[:i] == value))  # equal logits rank by index
    before = mass - float(np.einsum("i->", t)) + float(weight) * (above + ties)
    return max(before, 0.0)


def _locate(w: np.ndarray, u: float) -> int:
    """The index whose slice of ``[0, sum(w))``, laid out in index order, holds ``u`` (never a zero weight)."""
    n = len(w)
    if n <= 4 * BLOCK:
        return _locate_small(w, u)
    full = n // BLOCK * BLOCK
    blocks = np.einsum("ij->i", w[:full].reshape(-1, BLOCK)).astype(np.float64)
    if full < n:
        blocks = np.append(blocks, float(np.einsum("i->", w[full:])))
    cum = np.cumsum(blocks)
    k = min(int(np.searchsorted(cum, u, side="right")), int(np.flatnonzero(blocks)[-1]))
    start = k * BLOCK
    return start + _locate_small(w[start : start + BLOCK], u - (float(cum[k - 1]) if k else 0.0))


def _locate_small(w: np.ndarray, u: float) -> int:
    cum = np.cumsum(w, dtype=np.float64)
    j = int(np.searchsorted(cum, u, side="right"))
    if j >= len(w) or w[j] == 0:  # u at or past the end (rounding between the two sums): the last weighted one
        j = int(np.flatnonzero(w)[-1])
    return j
