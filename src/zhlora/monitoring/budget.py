"""The forgetting budget: test probe values against it, pick the step to export.

``--forgetting_budget`` is parsed by :func:`zhlora.forgetting_budget.parse_budget` (a low-level
module, so the config can validate the flag without importing this layer).

Pure functions over probe values (``{probe name: number}``), so every rule here is tested on
constructed sequences without a model.

A budget bounds what the English side may lose relative to the step-0 probes (the base model
with its freshly initialised adapter):

- ``acc:2`` — English probe accuracy (``en_acc``, a fraction in [0, 1]) may drop by at most
  2 percentage points: exceeded when ``100 * (baseline - value) > 2``;
- ``ppl:5%`` — English perplexity (``en_ppl``) may rise by at most 5 %: exceeded when
  ``value / baseline - 1 > 0.05``;
- ``acc:2,ppl:5%`` — both must hold.

The step exported as the run's adapter is the probed step with the largest Chinese gain —
the drop of the Chinese held-out loss ``zh_loss`` (nats/token) below its step-0 value —
among the steps within the budget (ties: the earlier step, which has drifted less).

A value that is missing from a log row or not finite (a diverged model gives NaN) exceeds
every limit on it and ranks last for the Chinese gain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zhlora.forgetting_budget import BudgetLimit, ForgettingBudget

CHINESE_LOSS = "zh_loss"
_TOLERANCE = 1e-9  # values exactly at the limit are within the budget, whatever the float rounding


@dataclass(frozen=True)
class Violation:
    """A limit crossed at one step: ``change`` is in the limit's unit (points, or a relative rise)."""

    limit: BudgetLimit
    baseline: float
    value: float
    change: float

    @property
    def excess(self) -> float:
        """How far past the limit, as a multiple of it (0.5 = half as much again)."""
        return self.change / self.limit.limit - 1.0 if self.limit.limit > 0 else math.inf

    def describe(self) -> str:
        """One line for the training log, e.g. ``en_ppl rose 7.3% (12.10 -> 12.98), over ppl:5%``."""
        if not math.isfinite(self.value):
            return f"{self.limit.probe} is {self.value} (the model diverged?), over {self.limit.text}"
        if self.limit.metric == "acc":
            return (f"{self.limit.probe} fell {self.change:.1f} points ({100 * self.baseline:.1f}% -> "
                    f"{100 * self.value:.1f}%), over {self.limit.text}")
        return (f"{self.limit.probe} rose {100 * self.change:.1f}% ({self.baseline:.4g} -> {self.value:.4g}), "
                f"over {self.limit.text}")


@dataclass(frozen=True)
class ProbePoint:
    """The probe values measured after ``step`` optimizer steps (step 0 = before training)."""

    step: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class Selection:
    """The step whose adapter is exported, whether it is within the budget, and why it was chosen."""

    step: int
    within_budget: bool
    zh_gain: float | None  # step-0 zh_loss minus this step's (nats/token); positive = learned
    reason: str


def violations(budget: ForgettingBudget | None, baseline: Mapping[str, float], values: Mapping[str, float]) -> list[Violation]:
    """The limits of ``budget`` that ``values`` cross relative to ``baseline`` (none without a budget).

    Raises:
        KeyError: a probe value the budget needs is missing (a bug: the monitor checks this up front).
    """
    if budget is None:
        return []
    crossed = []
    for limit in budget.limits:
        base, value = _number(baseline, limit.probe), _number(values, limit.probe)
        if not (math.isfinite(base) and math.isfinite(value)):
            change = math.inf
        elif limit.metric == "acc":
            change = 100.0 * (base - value)  # points lost
        else:
            change = value / base - 1.0  # relative rise
        if change > limit.limit + _TOLERANCE:
            crossed.append(Violation(limit, base, value, change))
    return crossed


def limit_values(budget: ForgettingBudget, baseline: Mapping[str, float]) -> dict[str, float]:
    """The probe value at which each limit of ``budget`` is reached, for charts and the manifest.

    E.g. ``{"en_ppl": 10.5}`` for ``ppl:5%`` from a step-0 perplexity of 10, ``{"en_acc": 0.43}``
    for ``acc:2`` from 45 % (accuracy as a fraction, like the probe value). A limit whose
    baseline is missing or not finite has no such value and is left out.
    """
    values = {}
    for limit in budget.limits:
        base = _number(baseline, limit.probe) if limit.probe in baseline else math.nan
        if math.isfinite(base):
            values[limit.probe] = base - limit.limit / 100.0 if limit.metric == "acc" else base * (1.0 + limit.limit)
    return values


def _number(values: Mapping[str, float | None], name: str) -> float:
    """``values[name]`` as a float; NaN when the probe is absent or logged as null."""
    value = values[name]
    return math.nan if value is None else float(value)


def _zh_gain(baseline: Mapping[str, float], values: Mapping[str, float]) -> float | None:
    """Drop of zh_loss below step 0 (nats/token); None without a zh_loss probe, -inf when not finite."""
    if CHINESE_LOSS not in baseline or CHINESE_LOSS not in values:
        return None
    gain = _number(baseline, CHINESE_LOSS) - _number(values, CHINESE_LOSS)
    return gain if math.isfinite(gain) else -math.inf


def select_step(budget: ForgettingBudget | None, baseline: ProbePoint, points: Sequence[ProbePoint]) -> Selection:
    """Choose the step to export among the probed steps ``points`` (after step 0, in step order).

    - No budget: the last step (monitoring only observed the run).
    - Some steps within the budget: the one with the largest Chinese gain; ties go to the
      earlier step. Without a ``zh_loss`` probe: the last step within the budget.
    - No step within the budget: the step that exceeds it least (smallest
      :attr:`Violation.excess`), flagged ``within_budget=False``.

    Raises:
        ValueError: ``points`` is empty.
    """
    if not points:
        raise ValueError("select_step needs at least one probed step after step 0")
    if budget is None:
        last = points[-1]
        return Selection(last.step, True, _zh_gain(baseline.values, last.values),
                         "no --forgetting_budget: the adapter of the last step is kept")
    within = [p for p in points if not violations(budget, baseline.values, p.values)]
    if within:
        gains = [(_zh_gain(baseline.values, p.values), p) for p in within]
        if any(gain is None for gain, _ in gains):
            chosen = within[-1]
            return Selection(chosen.step, True, None, f"last step within {budget.text} (no zh_loss probe to rank by)")
        best_gain = max(gain for gain, _ in gains)
        chosen = next(p for gain, p in gains if gain == best_gain)
        return Selection(chosen.step, True, best_gain,
                         f"largest Chinese gain (zh_loss {best_gain:+.4f} nats/token below step 0) among the "
                         f"{len(within)} probed step(s) within {budget.text}")

    def worst_excess(point: ProbePoint) -> float:
        return max(v.excess for v in violations(budget, baseline.values, point.values))

    chosen = min(points, key=lambda p: (worst_excess(p), p.step))
    return Selection(chosen.step, False, _zh_gain(baseline.values, chosen.values),
                     f"no probed step stayed within {budget.text}; this step exceeds it least")


def resolution_points(n_items: int) -> float:
    """Accuracy points one item is worth on a probe of ``n_items`` items (100 / n)."""
    return 100.0 / n_items if n_items > 0 else math.inf
