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


def _index_bootstrap(base: np.ndarray, tuned: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple:
    """The paired percentile bootstrap the interval replaced, by literal index resampling."""
    n = len(base)
    diff = tuned.astype(float) - base.astype(float)
    replicates = np.concatenate([
        100 * diff[rng.integers(0, n, size=(500, n))].mean(axis=1) for _ in range(resamples // 500)
    ])
    return stats.percentile_interval(replicates, 0.95)


@pytest.mark.parametrize(("a", "d"), [(5, 5), (10, 0), (3, 7)])
def test_no_flips_at_n10_is_not_a_point(a, d):
    """n = 10, nobody flipped: the bootstrap gives [0, 0]; the score interval is ±100 z²/(n + z²) = ±27.75."""
    counts = stats.PairedCounts(a=a, b=0, c=0, d=d)
    z2 = 1.959963984540054**2
    low, high = stats.paired_difference_interval(counts, 0.95)
    assert low == pytest.approx(-100 * z2 / (10 + z2), abs=1e-6) == pytest.approx(-27.7533, abs=1e-4)
    assert high == pytest.approx(100 * z2 / (10 + z2), abs=1e-6)
    base = np.array([True] * a + [False] * d)
    assert _index_bootstrap(base, base, 1000, np.random.default_rng(0)) == (0.0, 0.0)


def test_tango_published_example():
    """Fagerland, Lydersen & Laake (2014, Stat Med 33:2850) airway example: n11=1, n12=1, n21=7, n22=12
    (N = 21), difference (n12 − n21)/N = −0.286, Tango interval (−0.517, −0.026)."""
    # zhlora's difference is tuned − base = (c − b)/n, so b = n21 = 7, c = n12 = 1.
    low, high = stats.paired_difference_interval(stats.PairedCounts(a=1, b=7, c=1, d=12), 0.95)
    assert (round(low / 100, 3), round(high / 100, 3)) == (-0.517, -0.026)
    mirrored = stats.paired_difference_interval(stats.PairedCounts(a=1, b=1, c=7, d=12), 0.95)
    assert mirrored == pytest.approx((-high, -low), abs=1e-9)


def test_tango_bounds_are_where_the_score_test_just_rejects():
    """Hand check of the inversion: at each bound |T| = z, with T recomputed from the constrained MLE
    found by a general-purpose optimiser (scipy) instead of the closed-form root."""
    optimize = pytest.importorskip("scipy.optimize")
    b, c, n = 4, 11, 60
    z = 1.959963984540054
    low, high = stats.paired_difference_interval(stats.PairedCounts(a=30, b=b, c=c, d=n - 30 - b - c), 0.95)

    def score(delta):  # maximise the multinomial likelihood under P(c-cell) − P(b-cell) = delta
        def negative_loglik(q):  # q = P(right -> wrong); P(wrong -> right) = q + delta
            return -(b * math.log(q) + c * math.log(q + delta) + (n - b - c) * math.log(1 - 2 * q - delta))

        lower = max(1e-12, -delta + 1e-12)
        q = optimize.minimize_scalar(negative_loglik, bounds=(lower, (1 - delta) / 2 - 1e-12), method="bounded",
                                     options={"xatol": 1e-12}).x
        return (c - b - n * delta) / math.sqrt(n * (2 * q + delta * (1 - delta)))

    assert score(low / 100) == pytest.approx(z, abs=1e-4)
    assert score(high / 100) == pytest.approx(-z, abs=1e-4)
    assert low < 100 * (c - b) / n < high


def test_interval_agrees_with_bootstrap_at_large_n():
    rng = np.random.default_rng(1)
    base = rng.random(5000) < 0.45
    tuned = np.where(rng.random(5000) < 0.2, ~base, base)
    counts = stats.paired_counts(base, tuned)
    score = stats.paired_difference_interval(counts, 0.95)
    boot = _index_bootstrap(base, tuned, 4000, np.random.default_rng(2))
    assert score == pytest.approx(boot, abs=0.15)  # points; the bootstrap's own Monte Carlo error is ~0.05


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 0), (0, 3), (2, 0)])
def test_every_item_flipped_one_way_stays_inside_its_interval(b, c):
    counts = stats.PairedCounts(a=0, b=b, c=c, d=0)  # observed change ±100 points
    low, high = stats.paired_difference_interval(counts, 0.95)
    assert low <= counts.delta_points <= high and -100 <= low < high <= 100


def test_interval_is_fast_on_mmlu_size():
    counts = stats.PairedCounts(a=5000, b=1500, c=1300, d=6242)  # 14,042 items
    start = time.perf_counter()
    low, high = stats.paired_difference_interval(counts, 0.95)
    assert time.perf_counter() - start < 0.1
    assert low < counts.delta_points < high < 0


def test_combined_mean_interval_hand_case():
    # mean of +4 (CI 1..9) and -2 (CI -5..0): 1; below sqrt(3² + 3²)/2, above sqrt(5² + 2²)/2
    low, high = stats.combined_mean_interval([4.0, -2.0], [(1.0, 9.0), (-5.0, 0.0)])
    assert low == pytest.approx(1 - math.sqrt(18) / 2)
    assert high == pytest.approx(1 + math.sqrt(29) / 2)
    assert stats.combined_mean_interval([3.0], [(1.0, 4.0)]) == (1.0, 4.0)
    with pytest.raises(ValueError):
        stats.combined_mean_interval([], [])


@pytest.mark.parametrize(
    ("n", "discordant", "expected"),
    [
        # sqrt(n)·δ = z_α/2·sqrt(ψ) + z_β·sqrt(ψ − δ²), solved by hand (Connor 1987) with z = 1.95996, 0.84162:
        (80, 0.2, 13.8025),  # the "n = 80: changes smaller than ±14 points would go unseen"
        (10, 0.0, 61.5838),  # ψ = δ: sqrt(10 δ) = 1.95996 + 0.84162 sqrt(1 − δ)
        (14042, 0.1, 0.74758),
    ],
)
def test_minimum_detectable_change_hand_cases(n, discordant, expected):
    mde = stats.minimum_detectable_change(n, discordant, 0.05, 0.8)
    assert mde == pytest.approx(expected, abs=1e-3)
    assert stats.mcnemar_power(n, discordant, mde / 100, 0.05) == pytest.approx(0.8, abs=1e-6)


def test_minimum_detectable_change_hand_equation():
    """The n = 80, ψ = 0.2 case checked against the sample-size formula it inverts."""
    delta = stats.minimum_detectable_change(80, 0.2) / 100
    z_a, z_b = 1.959963984540054, 0.8416212335729143
    assert 80 == pytest.approx((z_a * math.sqrt(0.2) + z_b * math.sqrt(0.2 - delta**2)) ** 2 / delta**2, rel=1e-6)


def test_minimum_detectable_change_limits():
    assert stats.minimum_detectable_change(2, 0.0) == 100.0  # 2 items can never reach 80% power
    assert stats.minimum_detectable_change(1000, 0.3) > stats.minimum_detectable_change(1000, 0.05)
    assert stats.minimum_detectable_change(100, 0.2) > stats.minimum_detectable_change(400, 0.2)


def test_verdict_rule():
    assert stats.verdict(3.0, 0.01, 0.05) == "improved"
    assert stats.verdict(-3.0, 0.01, 0.05) == "forgot"
    assert stats.verdict(-3.0, 0.05, 0.05) == "no significant change"  # strict inequality
    assert stats.verdict(0.0, 0.0, 0.05) == "no significant change"


def test_document_bootstrap_hand_case():
    # every document loses 0.1 nats/token: every replicate's perplexity ratio is exp(-0.1) exactly
    totals = stats.bootstrap_document_totals({"base": [10.0, 20.0], "tuned": [9.0, 18.0], "tokens": [10, 20]},
                                             2500, stats.stable_rng(0, "p"))
    change = np.expm1((totals["tuned"] - totals["base"]) / totals["tokens"])
    assert change.shape == (2500,)
    assert np.allclose(change, math.expm1(-0.1))
    # documents that disagree give a spread around the pooled change
    totals = stats.bootstrap_document_totals({"base": [10.0, 20.0], "tuned": [12.0, 18.0], "tokens": [10, 20]},
                                             4000, stats.stable_rng(0, "p"))
    low, high = stats.percentile_interval(np.expm1((totals["tuned"] - totals["base"]) / totals["tokens"]), 0.95)
    assert low < 0.0 < high and low >= math.expm1(-0.1) - 1e-12 and high <= math.expm1(0.2) + 1e-12
    with pytest.raises(ValueError):
        stats.bootstrap_document_totals({"base": [1.0], "tuned": [1.0, 2.0]}, 10, stats.stable_rng(0, "p"))
