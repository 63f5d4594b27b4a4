"""Paired statistics against hand-computed values: McNemar exact, Holm, paired bootstrap, verdict."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from zhlora.analysis import stats


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),  # no discordant pairs: nothing to test
        (0, 5, 2 / 2**5),  # 2 * P[X <= 0], X ~ Bin(5, 1/2)
        (2, 8, 2 * (1 + 10 + 45) / 2**10),  # 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 0.109375
        (8, 2, 2 * (1 + 10 + 45) / 2**10),  # symmetric in b and c
        (5, 5, 1.0),  # 2 * P[X <= 5] > 1 is capped at 1
        (20, 0, 2 / 2**20),
        (2, 30, 2 * (1 + 32 + 496) / 2**32),
    ],
)
def test_mcnemar_exact_hand_cases(b, c, expected):
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_large_counts_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(1400, 1600), (700, 650), (3, 4000), (2500, 2500)]:
        expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)


def test_holm_hand_case():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert stats.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm_adjust([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm_adjust([0.2]) == [0.2]
    assert stats.holm_adjust([]) == []


def test_paired_counts_and_delta():
    base = [True, True, False, False, True, False]
    tuned = [True, False, True, True, True, False]
    counts = stats.paired_counts(base, tuned)
    assert (counts.a, counts.b, counts.c, counts.d) == (2, 1, 2, 1)
    assert counts.delta_points == pytest.approx(100 * (2 - 1) / 6)
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_counts([True], [True, False])


def test_bootstrap_without_discordant_items_has_zero_width():
    base = [True] * 30 + [False] * 70
    counts = stats.paired_counts(base, base)
    samples = stats.bootstrap_delta_samples(counts, 1000, stats.stable_rng(0, "x"))
    assert stats.percentile_interval(samples, 0.95) == (0.0, 0.0)


def test_bootstrap_matches_index_resampling_and_theory():
    """The multinomial shortcut has the distribution of resampling item indices."""
    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.45
    tuned = np.where(rng.random(400) < 0.2, ~base, base)
    counts = stats.paired_counts(base, tuned)
    fast = stats.bootstrap_delta_samples(counts, 20000, stats.stable_rng(3, "row"))
    index_rng = np.random.default_rng(4)
    slow = np.array(
        [100 * (tuned[idx].mean() - base[idx].mean()) for idx in index_rng.integers(0, 400, size=(20000, 400))]
    )
    diff = tuned.astype(float) - base.astype(float)
    theory_sd = 100 * diff.std() / math.sqrt(400)  # sd of a resampled mean of the per-item differences
    assert fast.mean() == pytest.approx(counts.delta_points, abs=0.05)
    assert fast.std() == pytest.approx(theory_sd, rel=0.03)
    assert slow.std() == pytest.approx(theory_sd, rel=0.03)
    fast_ci = stats.percentile_interval(fast, 0.95)
    slow_ci = stats.percentile_interval(slow, 0.95)
    assert fast_ci == pytest.approx(slow_ci, abs=0.3)


def test_bootstrap_is_reproducible_and_row_keyed():
    counts = stats.PairedCounts(a=50, b=10, c=20, d=20)
    one = stats.bootstrap_delta_samples(counts, 500, stats.stable_rng(7, "mmlu/subject/anatomy"))
    two = stats.bootstrap_delta_samples(counts, 500, stats.stable_rng(7, "mmlu/subject/anatomy"))
    other = stats.bootstrap_delta_samples(counts, 500, stats.stable_rng(7, "mmlu/subject/virology"))
    assert np.array_equal(one, two)
    assert not np.array_equal(one, other)


def test_bootstrap_is_fast_on_mmlu_size():
    counts = stats.PairedCounts(a=5000, b=1500, c=1300, d=6242)  # 14,042 items
    start = time.perf_counter()
    samples = stats.bootstrap_delta_samples(counts, 10000, stats.stable_rng(0, "mmlu"))
    elapsed = time.perf_counter() - start
    assert samples.shape == (10000,)
    assert elapsed < 0.5, f"bootstrap took {elapsed:.3f}s"
    low, high = stats.percentile_interval(samples, 0.95)
    assert low < counts.delta_points < high < 0


def test_verdict_rule():
    assert stats.verdict(3.0, 0.01, 0.05) == "improved"
    assert stats.verdict(-3.0, 0.01, 0.05) == "forgot"
    assert stats.verdict(-3.0, 0.05, 0.05) == "no significant change"  # strict inequality
    assert stats.verdict(0.0, 0.0, 0.05) == "no significant change"


def test_perplexity_bootstrap_hand_case():
    # every document loses 0.1 nats/token: every replicate is exp(-0.1) - 1 exactly
    samples = stats.bootstrap_perplexity_change([10.0, 20.0], [9.0, 18.0], [10, 20], 2500, stats.stable_rng(0, "p"))
    assert samples.shape == (2500,)
    assert np.allclose(samples, math.expm1(-0.1))
    # documents that disagree give a spread around the pooled change
    samples = stats.bootstrap_perplexity_change([10.0, 20.0], [12.0, 18.0], [10, 20], 4000, stats.stable_rng(0, "p"))
    low, high = stats.percentile_interval(samples, 0.95)
    assert low < 0.0 < high and low >= math.expm1(-0.1) - 1e-12 and high <= math.expm1(0.2) + 1e-12
