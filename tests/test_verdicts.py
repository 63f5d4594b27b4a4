"""The H1/H2 verdict math: non-inferiority against the forgetting budget, sample sizes, the
intersection-union rule, with known answers and independent checks (scipy, simulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zhlora.analysis import stats
from zhlora.analysis.verdicts import hypotheses, verdict_lines
from zhlora.errors import ConfigError
from zhlora.forgetting_budget import DEFAULT_FORGETTING_BUDGET, analysis_budget, parse_budget

Z_ONE_SIDED = 1.959963984540054  # alpha = 0.025 one-sided, the lower end of a 95% interval


@pytest.mark.parametrize("harm_low, harm_high, expected", [
    (-1.0, 1.5, "within"),      # worst end (1.5) inside a margin of 2
    (2.5, 6.0, "beyond"),       # all of it past the margin
    (-1.0, 3.0, "inconclusive"),
    (1.0, 2.0, "inconclusive"),  # touching the margin is not inside it
])
def test_margin_verdict_truth_table(harm_low, harm_high, expected):
    assert stats.margin_verdict(harm_low, harm_high, 2.0) == expected


@pytest.mark.parametrize("a, b, c, d", [(50, 3, 5, 42), (400, 10, 6, 84), (30, 12, 2, 56), (90, 0, 0, 10), (5, 9, 1, 85)])
def test_noninferiority_p_agrees_with_the_interval(a, b, c, d):
    """p < 0.025 exactly when the 95% Tango interval's lower end is above -margin (the test it inverts)."""
    counts = stats.PairedCounts(a=a, b=b, c=c, d=d)
    low, _ = stats.paired_difference_interval(counts, 0.95)
    for margin in (1.0, 2.0, 5.0, 10.0):
        p = stats.tango_noninferiority_p(counts, margin)
        assert (p < 0.025) == (low > -margin), (margin, p, low)


def test_noninferiority_p_matches_a_general_optimiser():
    """Independent check: the score statistic at delta0 = -m from the constrained MLE found by scipy."""
    optimize = pytest.importorskip("scipy.optimize")
    from statistics import NormalDist

    b, c, n, delta = 9, 6, 120, -0.05

    def negative_loglik(q):  # q = P(right -> wrong); P(wrong -> right) = q + delta
        return -(b * math.log(q) + c * math.log(q + delta) + (n - b - c) * math.log(1 - 2 * q - delta))

    q = optimize.minimize_scalar(negative_loglik, bounds=(-delta + 1e-12, (1 - delta) / 2 - 1e-12), method="bounded",
                                 options={"xatol": 1e-12}).x
    statistic = (c - b - n * delta) / math.sqrt(n * (2 * q + delta * (1 - delta)))
    expected = 1 - NormalDist().cdf(statistic)
    got = stats.tango_noninferiority_p(stats.PairedCounts(a=60, b=b, c=c, d=n - 60 - b - c), 5.0)
    assert got == pytest.approx(expected, abs=1e-6)


def test_items_needed_without_flips_is_where_the_interval_fits_the_margin():
    """With no flipped items the Tango interval is ±z²/(n+z²): 2 points fit from n = 189 on."""
    needed = stats.noninferiority_items_needed(0.0, 0.0, 0.02, 0.95)
    assert needed == 189
    inside = stats.paired_difference_interval(stats.PairedCounts(a=needed, b=0, c=0, d=0), 0.95)
    outside = stats.paired_difference_interval(stats.PairedCounts(a=needed - 2, b=0, c=0, d=0), 0.95)
    assert inside[0] > -2.0 >= outside[0]


def test_items_needed_gives_the_stated_power_in_simulation():
    """Draw paired outcomes at the computed n; Tango's test decides 'within' in ~80% of draws."""
    delta, psi, margin = 0.0, 0.12, 0.03
    n = stats.noninferiority_items_needed(delta, psi, margin, 0.95)
    rng = np.random.default_rng(7)
    draws = rng.multinomial(n, [psi / 2, psi / 2, 1 - psi], size=1500)  # b, c, concordant
    decided = [stats.tango_score(int(b), int(c), n, -margin) > Z_ONE_SIDED for b, c, _ in draws]
    assert 0.76 <= np.mean(decided) <= 0.84, (n, np.mean(decided))


def test_items_needed_is_none_on_the_margin():
    assert stats.noninferiority_items_needed(-0.02, 0.1, 0.02, 0.95) is None


def test_documents_needed_hand_case():
    """CI (0.00, 0.08) at 95% over 25 documents: se = 0.08/3.92 = 0.0204; the estimate 0.04 sits 0.02
    below a margin of 0.06: n = 25 (2.8016 x 0.0204 / 0.02)² = 204.3, so 205 documents."""
    se = 0.08 / (2 * 1.959963984540054)
    expected = math.ceil(25 * (2.801585218 * se / 0.02) ** 2)
    assert stats.documents_needed(25, 0.04, 0.0, 0.08, 0.06, 0.95) == expected == 205
    assert stats.documents_needed(25, 0.06, 0.0, 0.12, 0.06, 0.95) is None


def test_bootstrap_p_value_hand_cases():
    assert stats.bootstrap_p_value(np.array([-3.0, -2.0, -1.0, 1.0])) == pytest.approx(2 * 2 / 5)
    assert stats.bootstrap_p_value(np.full(999, -1.0)) == pytest.approx(2 / 1000)
    assert stats.bootstrap_p_value(np.zeros(9)) == 1.0


def test_the_default_budget_and_bad_budgets():
    assert analysis_budget(None).text == DEFAULT_FORGETTING_BUDGET == analysis_budget("  ").text
    assert analysis_budget("acc:1").text == "acc:1"
    with pytest.raises(ConfigError, match='unknown metric "bleu"'):
        parse_budget("bleu:2")


def _accuracy_row(name, language, n, b, c):
    counts = stats.PairedCounts(a=n // 2, b=b, c=c, d=n - n // 2 - b - c)
    low, high = stats.paired_difference_interval(counts, 0.95)
    return {"benchmark": name, "level": "benchmark", "language": language, "n": n, "right_to_wrong": b,
            "wrong_to_right": c, "delta_points": counts.delta_points, "ci_low_points": low, "ci_high_points": high,
            "p_value": stats.mcnemar_exact(b, c)}


def _ppl_row(name, language, change, low, high, p):
    return {"benchmark": name, "language": language, "n_documents": 40, "n_tokens": 4000, "relative_change": change,
            "ci_low": low, "ci_high": high, "p_value": p, "resolved": True,
            "units": {"bits_per_byte": {"count": 16000, "delta": change, "delta_ci_low": low / 10,
                                        "delta_ci_high": high / 10}}}


def test_h1_and_h2_supported():
    rows = [_accuracy_row("ceval", "zh", 2000, 40, 120), _accuracy_row("mmlu", "en", 4000, 30, 34)]
    ppl = [_ppl_row("ppl_zh", "zh", -0.2, -0.25, -0.15, 0.001), _ppl_row("ppl_en", "en", 0.005, -0.01, 0.02, 0.4)]
    answer = hypotheses(rows, ppl, analysis_budget("acc:2,ppl:5%"), confidence=0.95, significance=0.05)
    assert answer["H1"]["verdict"] == "supported" and set(answer["H1"]["improved"]) == {"ceval", "ppl_zh"}
    assert answer["H2"]["verdict"] == "supported", answer["H2"]["evidence"]
    assert rows[1]["margin_verdict"]["outcome"] == "within"
    assert ppl[1]["margin_verdicts"]["perplexity"]["outcome"] == "within"
    zh, en = verdict_lines(answer)
    assert "H1" in zh and "成立" in zh and en.startswith("H1 (Chinese improved): supported. H2")


def test_h2_is_rejected_when_one_english_row_is_beyond_and_inconclusive_when_one_is_open():
    """Intersection-union: every row must be within; one 'beyond' rejects; one open row leaves it open."""
    far = _accuracy_row("mmlu", "en", 3000, 400, 100)  # -10 points, CI well past -2
    fine = _ppl_row("ppl_en", "en", 0.0, -0.01, 0.01, 0.9)
    answer = hypotheses([far], [fine], analysis_budget(None), confidence=0.95, significance=0.05)
    assert answer["H2"]["verdict"] == "rejected" and answer["H2"]["beyond"] == ["mmlu"]
    small = _accuracy_row("gsm8k", "en", 50, 2, 2)  # no change seen, but 50 items cannot show "within 2 points"
    answer = hypotheses([small], [fine], analysis_budget(None), confidence=0.95, significance=0.05)
    assert answer["H2"]["verdict"] == "inconclusive" and answer["H2"]["inconclusive"] == ["gsm8k"]
    assert small["margin_verdict"]["items_needed"] > 50
    assert "would decide it" in answer["H2"]["evidence"]


def test_h1_is_contradicted_when_chinese_got_worse():
    rows = [_accuracy_row("cmmlu", "zh", 2000, 150, 40)]
    answer = hypotheses(rows, [], analysis_budget(None), confidence=0.95, significance=0.05)
    assert answer["H1"]["verdict"] == "contradicted" and answer["H1"]["worse"] == ["cmmlu"]
    assert answer["H2"]["verdict"] == "inconclusive"  # no English rows: nothing shows that nothing was forgotten


def test_holm_runs_over_the_chinese_family_only():
    """Two Chinese rows with p = 0.03 each: Holm makes both 0.06, not significant; English rows do not count."""
    rows = [_accuracy_row("ceval", "zh", 1000, 10, 24), _accuracy_row("cmmlu", "zh", 1000, 10, 24),
            _accuracy_row("mmlu", "en", 1000, 10, 10)]
    p = rows[0]["p_value"]
    answer = hypotheses(rows, [], analysis_budget(None), confidence=0.95, significance=0.05)
    assert rows[0]["superiority"]["p_holm"] == pytest.approx(min(1.0, 2 * p))
    assert answer["H1"]["rows"] == ["ceval", "cmmlu"]
