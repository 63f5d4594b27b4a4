"""The forgetting budget on constructed probe sequences: parsing, crossing, and the step chosen for export."""

from __future__ import annotations

import pytest

from zhlora.config import TrainConfig
from zhlora.errors import ConfigError
from zhlora.forgetting_budget import parse_budget
from zhlora.monitoring.budget import ProbePoint, limit_values, resolution_points, select_step, violations

BASE = ProbePoint(0, {"zh_loss": 2.00, "en_ppl": 10.0, "en_acc": 0.450})


def _points(*rows: tuple[int, float, float, float]) -> list[ProbePoint]:
    """``(step, zh_loss, en_ppl, en_acc)`` rows as probe points."""
    return [ProbePoint(step, {"zh_loss": zh, "en_ppl": ppl, "en_acc": acc}) for step, zh, ppl, acc in rows]


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------
def test_parse_both_forms_and_their_combination():
    acc = parse_budget("acc:2")
    assert [(lim.metric, lim.limit, lim.probe) for lim in acc.limits] == [("acc", 2.0, "en_acc")]
    ppl = parse_budget(" PPL : 5% ")
    assert [(lim.metric, lim.limit, lim.probe) for lim in ppl.limits] == [("ppl", 0.05, "en_ppl")]
    both = parse_budget("acc:1.5,ppl:2.5%")
    assert both.text == "acc:1.5,ppl:2.5%" and both.probes == ["en_acc", "en_ppl"]
    assert parse_budget(None) is None and parse_budget("  ") is None


@pytest.mark.parametrize("text, message", [
    ("ppl:5", "write it with %, e.g. ppl:5%"),
    ("acc:2%", "percentage points, written without %"),
    ("loss:2", 'unknown metric "loss"'),
    ("acc:-2", 'cannot read "acc:-2"'),
    ("acc", 'cannot read "acc"'),
    ("acc:2,acc:3", "acc is bounded twice"),
])
def test_bad_budgets_name_the_flag_and_the_fix(text, message):
    with pytest.raises(ConfigError, match="--forgetting_budget") as info:
        parse_budget(text)
    assert message in str(info.value)


def test_config_checks_the_budget_and_that_probes_run():
    with pytest.raises(ConfigError, match="write it with %"):
        TrainConfig(forgetting_budget="ppl:5", monitor_every=10)
    assert TrainConfig(forgetting_budget="acc:2").forgetting_budget == "acc:2"  # without probes: the analysis margin
    with pytest.raises(ConfigError, match="--monitor_every must be >= 0"):
        TrainConfig(monitor_every=-1)
    with pytest.raises(ConfigError, match="--probe_limit must be a positive"):
        TrainConfig(monitor_every=5, probe_limit=0)
    for bad in (-0.1, 10.0, float("nan")):  # 10 is someone meaning 10 %
        with pytest.raises(ConfigError, match=r"--probe_overhead is a fraction .* \(0.1 = 10%, 0 = no bound\)"):
            TrainConfig(monitor_every=5, probe_overhead=bad)
    assert TrainConfig().probe_overhead == 0.10 and TrainConfig(probe_overhead=0).probe_overhead == 0
    assert TrainConfig(forgetting_budget="acc:2,ppl:5%", monitor_every=10).forgetting_budget == "acc:2,ppl:5%"


# ---------------------------------------------------------------------------------------
# crossing the budget
# ---------------------------------------------------------------------------------------
def test_accuracy_drop_is_measured_in_points_and_the_limit_itself_is_allowed():
    budget = parse_budget("acc:2")
    assert violations(budget, BASE.values, {"en_acc": 0.430, "en_ppl": 99.0}) == []  # exactly 2 points: allowed
    assert violations(budget, BASE.values, {"en_acc": 0.470, "en_ppl": 99.0}) == []  # a gain is never a violation
    (crossed,) = violations(budget, BASE.values, {"en_acc": 0.425, "en_ppl": 10.0})
    assert crossed.change == pytest.approx(2.5) and crossed.excess == pytest.approx(0.25)
    assert crossed.describe() == "en_acc fell 2.5 points (45.0% -> 42.5%), over acc:2"


def test_perplexity_rise_is_relative():
    budget = parse_budget("ppl:5%")
    assert violations(budget, BASE.values, {"en_ppl": 10.5, "en_acc": 0.0}) == []  # exactly +5%
    (crossed,) = violations(budget, BASE.values, {"en_ppl": 11.0, "en_acc": 0.45})
    assert crossed.change == pytest.approx(0.10)
    assert crossed.describe() == "en_ppl rose 10.0% (10 -> 11), over ppl:5%"


def test_limit_values_are_where_each_limit_is_reached():
    assert limit_values(parse_budget("acc:2,ppl:5%"), BASE.values) == {"en_acc": pytest.approx(0.43),
                                                                       "en_ppl": pytest.approx(10.5)}
    assert limit_values(parse_budget("ppl:5%"), {"en_ppl": float("nan")}) == {}  # no finite baseline, no line
    assert limit_values(parse_budget("acc:2"), {"en_ppl": 10.0}) == {}


def test_combined_budget_reports_every_crossed_limit():
    budget = parse_budget("acc:2,ppl:5%")
    crossed = violations(budget, BASE.values, {"en_ppl": 11.0, "en_acc": 0.40})
    assert [v.limit.metric for v in crossed] == ["acc", "ppl"]
    assert violations(None, BASE.values, {"en_ppl": 1e9, "en_acc": 0.0}) == []


# ---------------------------------------------------------------------------------------
# which step is exported
# ---------------------------------------------------------------------------------------
def test_no_trigger_exports_the_best_chinese_step():
    points = _points((10, 1.80, 10.1, 0.45), (20, 1.60, 10.2, 0.44), (30, 1.65, 10.3, 0.44))
    budget = parse_budget("ppl:5%")
    assert all(not violations(budget, BASE.values, p.values) for p in points)
    chosen = select_step(budget, BASE, points)
    assert (chosen.step, chosen.within_budget) == (20, True)
    assert chosen.zh_gain == pytest.approx(0.40)
    assert "largest Chinese gain" in chosen.reason and "3 probed step(s) within ppl:5%" in chosen.reason


def test_trigger_keeps_the_best_step_within_the_budget_not_the_best_overall():
    # step 30 learned most Chinese but lost 6 points of English; step 20 is the best allowed one
    points = _points((10, 1.90, 10.0, 0.45), (20, 1.70, 10.2, 0.44), (30, 1.40, 10.4, 0.39))
    budget = parse_budget("acc:2")
    assert [bool(violations(budget, BASE.values, p.values)) for p in points] == [False, False, True]
    chosen = select_step(budget, BASE, points)
    assert (chosen.step, chosen.within_budget, round(chosen.zh_gain, 6)) == (20, True, 0.3)


def test_steps_that_come_back_within_the_budget_stay_candidates():
    # --budget_action mark: step 20 crosses, step 30 recovers and learned more
    points = _points((10, 1.90, 10.0, 0.45), (20, 1.80, 12.0, 0.45), (30, 1.70, 10.3, 0.45))
    assert select_step(parse_budget("ppl:5%"), BASE, points).step == 30


def test_ties_go_to_the_earlier_step():
    points = _points((10, 1.50, 10.0, 0.45), (20, 1.50, 10.1, 0.45))
    assert select_step(parse_budget("acc:2"), BASE, points).step == 10


def test_nothing_within_the_budget_falls_back_to_the_smallest_excess_and_says_so():
    points = _points((10, 1.9, 12.0, 0.45), (20, 1.8, 11.0, 0.45), (30, 1.7, 13.0, 0.45))
    chosen = select_step(parse_budget("ppl:5%"), BASE, points)
    assert (chosen.step, chosen.within_budget) == (20, False)
    assert "no probed step stayed within ppl:5%" in chosen.reason


def test_without_a_budget_the_last_step_is_kept():
    points = _points((10, 1.5, 50.0, 0.10), (20, 1.9, 60.0, 0.05))
    chosen = select_step(None, BASE, points)
    assert (chosen.step, chosen.within_budget) == (20, True) and "no --forgetting_budget" in chosen.reason


def test_without_a_chinese_probe_the_last_allowed_step_is_kept():
    points = [ProbePoint(10, {"en_acc": 0.45}), ProbePoint(20, {"en_acc": 0.44}), ProbePoint(30, {"en_acc": 0.30})]
    chosen = select_step(parse_budget("acc:2"), ProbePoint(0, {"en_acc": 0.45}), points)
    assert (chosen.step, chosen.zh_gain) == (20, None)


def test_select_needs_a_probed_step():
    with pytest.raises(ValueError):
        select_step(None, BASE, [])


def test_resolution_of_an_accuracy_probe():
    assert resolution_points(104) == pytest.approx(100 / 104)
