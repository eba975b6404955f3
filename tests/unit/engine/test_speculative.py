"""Speculative decoding's rule keeps the target's distribution exactly (engine/speculative.py).

Each case scripts a target and a draft distribution (through ``NucleusSampler.distribution``, so top-p, min-p,
top-k and banned tokens shape them as in a real request), draws tens of thousands of drafts from q, applies the
acceptance rule, and compares what comes out with p by the chi-square test of test_nucleus (one in a million:
fixed seeds cannot flake). Tokens outside p's support must never come out.
"""

from __future__ import annotations

import numpy as np
import pytest

from localr1.engine.nucleus import NucleusSampler
from localr1.engine.speculative import DraftLength, NgramDrafter, Speculator, accept
from tests.unit.engine.test_nucleus import R1_VOCAB, chi_square_ok, reference

N = 20_000


def _dist(logits, **kw):
    return NucleusSampler(len(logits), **kw).distribution(np.asarray(logits, np.float32))


def _dense(dist, n):
    out = np.zeros(n)
    out[dist[0]] = dist[1]
    return out


def _run(p, q, n_vocab, seed=0, n=N):
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_vocab, np.int64)
    accepted = 0
    q_cum = np.cumsum(q[1])
    for _ in range(n):
        d = int(q[0][min(int(np.searchsorted(q_cum, rng.random(), side="right")), len(q_cum) - 1)])
        ok, token = accept(p, q, d, rng)
        accepted += ok
        counts[token] += 1
    return counts, accepted / n


rng0 = np.random.default_rng(7)
FLAT = rng0.normal(0, 0.3, 64).astype(np.float32)
PEAKED = np.concatenate([[8.0, 6.5, 6.0], rng0.normal(0, 1, 61)]).astype(np.float32)
SHIFTED = np.roll(PEAKED, 5)  # most of q's mass where p has little
BANNED = PEAKED.copy()
BANNED[[0, 7, 9]] = -np.inf

CASES = {
    "peaked vs flat": (PEAKED, FLAT, dict(temperature=0.6, top_p=0.95)),
    "flat vs peaked": (FLAT, PEAKED, dict(temperature=0.6, top_p=0.95)),
    "disjoint-ish": (PEAKED, SHIFTED, dict(temperature=0.6, top_p=0.95)),
    "min-p and top-k": (PEAKED, FLAT, dict(temperature=1.0, top_p=0.9, min_p=0.05, top_k=20)),
    "banned tokens": (BANNED, PEAKED, dict(temperature=0.6, top_p=0.95)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_comes_out_is_the_targets_distribution(case):
    target, draft, kw = CASES[case]
    p, q = _dist(target, **kw), _dist(draft, **kw)
    counts, _ = _run(p, q, len(target), seed=hash(case) % 1000)
    probs = _dense(p, len(target))
    ok, stat, critical = chi_square_ok(counts, probs)
    assert ok, (case, stat, critical)
    assert counts[probs == 0].sum() == 0  # nothing outside the nucleus


def test_identical_distributions_accept_every_draft():
    p = _dist(PEAKED, temperature=0.6, top_p=0.95)
    _, rate = _run(p, p, len(PEAKED), n=5_000)
    assert rate == 1.0


def test_disjoint_distributions_accept_nothing_and_still_give_p():
    p = (np.array([0, 1]), np.array([0.7, 0.3]))
    q = (np.array([2, 3]), np.array([0.5, 0.5]))
    counts, rate = _run(p, q, 4)
    assert rate == 0.0
    assert counts[2:].sum() == 0
    assert chi_square_ok(counts, np.array([0.7, 0.3, 0, 0]))[0]


def test_acceptance_is_the_overlap_of_p_and_q():
    p, q = _dist(PEAKED, temperature=1.0), _dist(FLAT, temperature=1.0)
    _, rate = _run(p, q, 64, n=40_000)
    overlap = np.minimum(_dense(p, 64), _dense(q, 64)).sum()
    assert abs(rate - overlap) < 5 * np.sqrt(overlap * (1 - overlap) / 40_000)


def test_r1_vocabulary_with_a_point_mass_draft():
    """An n-gram's draft (q a point mass) on R1's vocabulary: accepted with probability p(d)."""
    logits = np.random.default_rng(3).normal(0, 2, R1_VOCAB).astype(np.float32)
    logits[[11, 12]] = [9.0, 8.6]
    p = _dist(logits, temperature=0.6, top_p=0.95)
    d = 12
    q = (np.array([d]), np.array([1.0]))
    counts, rate = _run(p, q, R1_VOCAB, n=20_000)
    probs = _dense(p, R1_VOCAB)
    assert abs(rate - probs[d]) < 5 * np.sqrt(probs[d] * (1 - probs[d]) / 20_000)
    assert chi_square_ok(counts, probs)[0]


@pytest.mark.parametrize(
    "kw",
    [dict(temperature=0.6, top_p=0.95), dict(temperature=1.0, top_p=0.5, min_p=0.1), dict(temperature=0.7, top_k=5)],
)
def test_the_explicit_distribution_is_the_samplers(kw):
    logits = np.random.default_rng(5).normal(0, 3, 5000).astype(np.float32)
    ids, probs = NucleusSampler(5000, **kw).distribution(logits)
    ref = reference(logits, **kw)
    dense = np.zeros(5000)
    dense[ids] = probs
    assert set(ids) == set(np.flatnonzero(ref > 0))
    np.testing.assert_allclose(dense, ref, atol=1e-6)
    assert list(probs) == sorted(probs, reverse=True)


def test_ngram_drafts_continue_the_latest_occurrence():
    d = NgramDrafter()
    tokens = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert d.propose(tokens, 4) == [4, 5, 9, 1]
    tokens += [4, 7, 1, 2, 3]  # the latest "1 2 3" is now followed by 4 7
    assert d.propose(tokens, 2) == [4, 7]
    assert d.propose([5, 6, 7], 3) == []  # a new context: nothing repeats
    assert d.propose([1, 2, 1, 2], 8) == [1, 2]  # the continuation may run into the suffix itself


def test_ngram_index_built_piece_by_piece_equals_one_built_at_once():
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, 6, 300)]
    grown, live = NgramDrafter(), []
    for t in tokens:
        live.append(t)
        step = grown.propose(live, 5)
        assert step == NgramDrafter().propose(list(live), 5)


def test_draft_length_follows_acceptance_and_cost_and_pauses_where_drafting_loses():
    length = DraftLength(longest=16, start=4)
    assert length.length() == 0  # nothing is drafted before a plain step was timed
    length.plain(0.010)
    assert length.length() == 4
    length.verified(4, 4, 0.010 + 4 * 0.001)  # everything kept, a drafted token costs a tenth of a step
    assert length.rho == 1.0 and length.extra == pytest.approx(0.001)
    assert length.k == 16  # cheap and always right: the longest draft
    assert length.speed_up(16) > 5
    length.verified(16, 0, 0.010 + 16 * 0.005)  # nothing kept, and dear
    assert 0 < length.rho < 1 and length.k < 16
    assert length.speed_up(length.k) == max(length.speed_up(k) for k in range(1, 17))
    for _ in range(10):  # it keeps failing: no length pays, drafting pauses
        length.verified(length.k, 0, 0.010 + length.k * 0.005)
        if length.pause:
            break
    assert length.pause == DraftLength.FIRST_PAUSE
    assert [length.length() for _ in range(DraftLength.FIRST_PAUSE - 1)] == [0] * (DraftLength.FIRST_PAUSE - 1)
    assert length.length() >= 4  # then it tries again
    assert length.next_pause == 2 * DraftLength.FIRST_PAUSE  # losing again would pause twice as long


def test_an_expensive_draft_token_shortens_the_draft():
    cheap, dear = DraftLength(longest=16), DraftLength(longest=16)
    for length, extra in ((cheap, 0.0005), (dear, 0.005)):
        length.plain(0.010)
        for _ in range(5):  # nine in ten drafted tokens kept
            length.verified(10, 9, 0.010 + 10 * extra)
    assert 0.85 < cheap.rho < 0.95 and cheap.k > dear.k >= 1
    assert cheap.speed_up(cheap.k) > dear.speed_up(dear.k) > 1


def test_a_speculator_counts_and_routes_each_proposal():
    spec = Speculator("ngram")
    tokens = [1, 2, 3, 1, 2]
    assert spec.propose(tokens, 4) == ([], None)  # no plain step timed yet
    spec.verified(0, 0, 0.01)
    drafts, dists = spec.propose(tokens, 4)
    assert drafts == [3, 1, 2] and dists is None
    spec.verified(3, 2, 0.012)
    assert (spec.stats.drafted, spec.stats.accepted) == (3, 2)
    assert spec.stats.to_dict() == {"mode": "ngram", "drafted": 3, "accepted": 2, "acceptance": 0.6667}
    assert not Speculator("off").active
