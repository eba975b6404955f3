"""localr1.engine.nucleus draws from exactly the distribution of temperature -> top-k -> top-p -> min-p sampling.

The reference below is the textbook definition in float64 with a full sort; the sampler never sorts. Each
case draws thousands of tokens and compares the counts with the reference probabilities by a chi-square
test (cells pooled to an expected count of at least 5), at a significance of one in a million so that a
fixed seed on another NumPy build cannot flake; and tokens outside the kept set must never appear.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from localr1.engine import nucleus
from localr1.engine.nucleus import NucleusSampler
from localr1.errors import EngineError

R1_VOCAB = 152_064


def reference(logits, *, temperature, top_p=1.0, min_p=0.0, top_k=0, logit_bias=None) -> np.ndarray:
    """Probabilities of every token under the chain bias -> top-k -> temperature -> top-p -> min-p."""
    x = np.asarray(logits, np.float64).copy()
    for t, b in (logit_bias or {}).items():
        x[t] += b
    order = np.lexsort((np.arange(len(x)), -x))  # descending logit, ties by token id
    keep = np.zeros(len(x), bool)
    kept_order = order[:top_k] if top_k else order
    z = (x[kept_order] - x[kept_order[0]]) / temperature
    p = np.exp(z)
    p /= p.sum()
    n = int(np.searchsorted(np.cumsum(p), top_p, side="left")) + 1 if top_p < 1 else len(p)
    if min_p > 0:
        n = min(n, int(np.count_nonzero(p >= min_p * p[0])))
    keep[kept_order[:n]] = True
    probs = np.zeros(len(x))
    probs[kept_order[:n]] = p[:n] / p[:n].sum()
    assert keep[probs > 0].all()
    return probs


def chi_square_ok(counts: np.ndarray, probs: np.ndarray, *, z: float = 4.75) -> tuple[bool, float, float]:
    """Pearson's test of ``counts`` against ``probs``, cells pooled (in probability order) to >= 5 expected.

    The critical value is the Wilson-Hilferty approximation of the chi-square quantile at ``z`` standard
    deviations (4.75: about one in a million)."""
    n = counts.sum()
    support = np.flatnonzero(probs > 0)
    order = support[np.argsort(-probs[support], kind="stable")]
    exp_cells, obs_cells, e_acc, o_acc = [], [], 0.0, 0
    for t in order:
        e_acc += probs[t] * n
        o_acc += counts[t]
        if e_acc >= 5:
            exp_cells.append(e_acc)
            obs_cells.append(o_acc)
            e_acc, o_acc = 0.0, 0
    if e_acc > 0:
        if exp_cells:
            exp_cells[-1] += e_acc
            obs_cells[-1] += o_acc
        else:
            exp_cells.append(e_acc)
            obs_cells.append(o_acc)
    e, o = np.array(exp_cells), np.array(obs_cells)
    stat = float(((o - e) ** 2 / e).sum())
    k = max(len(e) - 1, 1)
    critical = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return stat <= critical, stat, critical


def draw_counts(sampler: NucleusSampler, logits: np.ndarray, n: int) -> np.ndarray:
    counts = np.zeros(len(logits), np.int64)
    for _ in range(n):
        counts[sampler(logits)] += 1
    return counts


def _vocab(n: int, scale: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _peaked() -> np.ndarray:
    x = _vocab(5000, 2.0, 1)
    x[17], x[4000], x[9] = 9.0, 8.6, 8.0  # three tokens hold most of the mass, none of them alone 95%
    return x


def _with_ties() -> np.ndarray:
    x = np.full(400, -5.0, np.float32)
    x[100:120] = 3.0  # twenty equal tokens, each ~5% of the mass: the nucleus boundary cuts through them
    return x


def _with_minus_inf() -> np.ndarray:
    x = _vocab(3000, 1.5, 2)
    x[::3] = -np.inf
    return x


def _long_tail() -> np.ndarray:
    """A real model's shape: a few dozen plausible tokens, thousands far below (and subnormal weights)."""
    x = _vocab(20_000, 3.0, 14) - 40.0
    x[:40] = _vocab(40, 1.0, 15) + 10.0
    return x


CASES = {
    "peaked": (_peaked, dict(temperature=0.6, top_p=0.95)),
    "flat": (lambda: _vocab(2000, 0.3, 3), dict(temperature=0.6, top_p=0.95)),
    "ties": (_with_ties, dict(temperature=1.0, top_p=0.52)),
    "minus-inf": (_with_minus_inf, dict(temperature=0.6, top_p=0.9)),
    "small-top-p": (lambda: _vocab(3000, 1.0, 4), dict(temperature=0.6, top_p=0.2)),
    "min-p": (lambda: _vocab(3000, 1.0, 5), dict(temperature=0.6, top_p=0.95, min_p=0.3)),
    "top-k": (lambda: _vocab(3000, 1.0, 6), dict(temperature=0.6, top_p=0.95, top_k=40)),
    "no-top-p": (lambda: _vocab(3000, 0.5, 7), dict(temperature=0.6, top_p=1.0)),
    "bias": (lambda: _vocab(3000, 1.0, 8), dict(temperature=0.6, top_p=0.95, logit_bias={5: 4.0, 6: -np.inf})),
    "long-tail": (_long_tail, dict(temperature=0.6, top_p=0.95)),
    "long-tail-no-top-p": (_long_tail, dict(temperature=0.6, top_p=1.0)),
}


@pytest.fixture(params=["as-shipped", "tail-heavy"])
def cut(request, monkeypatch):
    """The sampler's head/tail split as shipped, and forced close to the top with any head gathered and any
    bound accepted (most tokens then lie in the tail, whose bound is loose: draws land in its slot and
    decisions need it computed, which a real model triggers rarely)."""
    if request.param == "tail-heavy":
        monkeypatch.setattr(nucleus, "CUTS", (1.5,))
        monkeypatch.setattr(nucleus, "HEAD_SHARE", 1)
        monkeypatch.setattr(nucleus, "LOOSE_BOUND", math.inf)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
def test_draws_match_the_reference_distribution(case, cut):
    make, settings = CASES[case]
    logits = make()
    probs = reference(logits, **settings)
    sampler = NucleusSampler(len(logits), seed=1234, **settings)
    counts = draw_counts(sampler, logits, 20_000)
    assert not counts[probs == 0].any(), "a token outside the kept set was drawn"
    ok, stat, critical = chi_square_ok(counts, probs)
    assert ok, f"chi-square {stat:.1f} > {critical:.1f}"


def test_ties_split_by_token_id():
    logits = _with_ties()
    sampler = NucleusSampler(len(logits), temperature=1.0, top_p=0.52, seed=3)
    drawn = {sampler(logits) for _ in range(3000)}
    assert drawn == set(range(100, 111))  # 11 of the 20 equal tokens reach 52%: the ones with the lowest ids


def test_r1_vocabulary_flat_and_peaked():
    """The real size: a 152k vocabulary, near-uniform (a random model) and peaked (a sure one)."""
    flat = _vocab(R1_VOCAB, 0.25, 9)
    probs = reference(flat, temperature=0.6, top_p=0.95)
    sampler = NucleusSampler(R1_VOCAB, temperature=0.6, top_p=0.95, seed=5)
    counts = draw_counts(sampler, flat, 8_000)
    assert not counts[probs == 0].any()
    assert chi_square_ok(counts, probs)[0]

    peaked = _vocab(R1_VOCAB, 2.0, 10)
    peaked[77_000] = 30.0
    sampler = NucleusSampler(R1_VOCAB, temperature=0.6, top_p=0.95, seed=5)
    assert {sampler(peaked) for _ in range(200)} == {77_000}
    assert sampler.draws == 0  # the fast path: the top token alone holds the nucleus


def test_the_test_sees_a_wrong_distribution():
    """The checks would catch a sampler that ignored top-p, or got the temperature slightly wrong."""
    logits = _vocab(2000, 1.0, 11)
    probs = reference(logits, temperature=0.6, top_p=0.8)
    wrong = draw_counts(NucleusSampler(2000, temperature=0.6, top_p=1.0, seed=1), logits, 20_000)
    assert wrong[probs == 0].any()
    hot = draw_counts(NucleusSampler(2000, temperature=0.7, top_p=0.8, seed=1), logits, 20_000)
    assert not chi_square_ok(np.where(probs > 0, hot, 0), probs)[0]


def test_seeded_draws_repeat_and_seeds_differ():
    logits = _vocab(5000, 1.0, 12)
    a = [NucleusSampler(5000, temperature=0.6, top_p=0.95, seed=42)(logits) for _ in range(1)]
    first = NucleusSampler(5000, temperature=0.6, top_p=0.95, seed=42)
    second = NucleusSampler(5000, temperature=0.6, top_p=0.95, seed=42)
    other = NucleusSampler(5000, temperature=0.6, top_p=0.95, seed=43)
    run1 = [first(logits) for _ in range(50)]
    assert run1 == [second(logits) for _ in range(50)]
    assert run1 != [other(logits) for _ in range(50)]
    assert run1[0] == a[0]


def test_logits_are_never_written():
    logits = _vocab(3000, 1.0, 13)
    before = logits.copy()
    sampler = NucleusSampler(3000, temperature=0.6, top_p=0.5, min_p=0.1, top_k=100, seed=1, logit_bias={3: 2.0})
    for _ in range(100):
        sampler(logits)
    assert np.array_equal(logits, before)


@pytest.mark.parametrize(
    "logits",
    [np.full(100, np.nan, np.float32), np.full(100, -np.inf, np.float32), np.array([np.inf, 0.0], np.float32)],
    ids=["nan", "all-banned", "plus-inf"],
)
def test_unusable_logits_are_an_engine_error(logits):
    with pytest.raises(EngineError):
        NucleusSampler(len(logits), temperature=0.6, top_p=0.95, seed=1)(logits)


def test_a_single_finite_token_is_always_drawn():
    logits = np.full(1000, -np.inf, np.float32)
    logits[321] = -50.0
    sampler = NucleusSampler(1000, temperature=0.6, top_p=0.95, seed=1)
    assert {sampler(logits) for _ in range(50)} == {321}


def test_the_tail_is_computed_only_when_a_decision_needs_it(monkeypatch):
    logits = _long_tail()
    sampler = NucleusSampler(len(logits), temperature=0.6, top_p=0.95, seed=2)
    for _ in range(2000):
        sampler(logits)
    assert sampler.tails == 0  # 20k tokens 50 below the top: their bound never matters
    monkeypatch.setattr(nucleus, "CUTS", (1.5,))
    monkeypatch.setattr(nucleus, "HEAD_SHARE", 1)
    monkeypatch.setattr(nucleus, "LOOSE_BOUND", math.inf)
    sampler = NucleusSampler(len(logits), temperature=0.6, top_p=0.95, seed=2)
    for _ in range(200):
        sampler(logits)
    assert sampler.tails > 0
