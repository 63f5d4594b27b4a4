"""``--forgetting_budget``: its syntax and parsed form, below every layer that uses it.

One budget serves twice. During training (with ``--monitor_every``) the monitor
(:mod:`zhlora.monitoring.budget`) tests probe values against it and can stop or pick an
earlier step; after training the forgetting analysis (:mod:`zhlora.analysis.verdicts`) uses it
as the non-inferiority margin of every English row, :data:`DEFAULT_FORGETTING_BUDGET` when none
is given. The config validates the flag with :func:`parse_budget`, so the config layer never
imports the monitoring or analysis layers. Syntax:

- ``acc:2`` — English probe accuracy (``en_acc``) may drop by at most 2 percentage points;
- ``ppl:5%`` — English perplexity (``en_ppl``) may rise by at most 5 %;
- ``acc:2,ppl:5%`` — both must hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zhlora.errors import ConfigError

# The analysis margin when --forgetting_budget is not given: English accuracy may fall by at most
# 2 points and English perplexity rise by at most 5% (docs/analysis.md, "Verdicts").
DEFAULT_FORGETTING_BUDGET = "acc:2,ppl:5%"
ENGLISH_ACCURACY = "en_acc"
ENGLISH_PERPLEXITY = "en_ppl"
_TERM = re.compile(r"^(?P<metric>[a-z]+)\s*:\s*(?P<number>[0-9]*\.?[0-9]+)\s*(?P<percent>%?)$")
_EXAMPLES = "Examples: acc:2 (at most 2 points of English probe accuracy), ppl:5% (at most +5% English perplexity), acc:2,ppl:5%."


@dataclass(frozen=True)
class BudgetLimit:
    """One bound: ``metric`` "acc" (``limit`` in accuracy points) or "ppl" (``limit`` a relative rise, 0.05 = 5 %)."""

    metric: str
    limit: float
    text: str

    @property
    def probe(self) -> str:
        """The probe value this limit reads."""
        return ENGLISH_ACCURACY if self.metric == "acc" else ENGLISH_PERPLEXITY


@dataclass(frozen=True)
class ForgettingBudget:
    """The parsed ``--forgetting_budget``: every limit must hold."""

    limits: tuple[BudgetLimit, ...]
    text: str

    @property
    def probes(self) -> list[str]:
        """Probe values the budget needs."""
        return sorted({limit.probe for limit in self.limits})


def parse_budget(text: str | None) -> ForgettingBudget | None:
    """Parse ``--forgetting_budget`` (None or empty: no budget).

    Raises:
        ConfigError: unknown metric, a ``ppl`` bound without ``%``, an ``acc`` bound with ``%``,
            a negative or repeated bound.
    """
    if text is None or not text.strip():
        return None
    limits = []
    for raw in text.split(","):
        term = raw.strip().lower()
        match = _TERM.match(term)
        if not match:
            raise ConfigError(f'--forgetting_budget: cannot read "{raw.strip()}". {_EXAMPLES}')
        metric, number, percent = match["metric"], float(match["number"]), match["percent"]
        if metric == "acc":
            if percent:
                raise ConfigError(
                    f'--forgetting_budget "{raw.strip()}": accuracy bounds are in percentage points, written '
                    f"without %: acc:{match['number']} allows a drop from e.g. 45.0% to {45 - number:.1f}%."
                )
            limit = number
        elif metric == "ppl":
            if not percent:
                raise ConfigError(
                    f'--forgetting_budget "{raw.strip()}": a perplexity bound is a relative rise; write it with %, '
                    f"e.g. ppl:{match['number']}% (perplexity may grow by at most {match['number']}%)."
                )
            limit = number / 100.0
        else:
            raise ConfigError(f'--forgetting_budget: unknown metric "{metric}" in "{raw.strip()}". {_EXAMPLES}')
        if any(existing.metric == metric for existing in limits):
            raise ConfigError(f'--forgetting_budget "{text}": {metric} is bounded twice; keep one bound per metric.')
        limits.append(BudgetLimit(metric, limit, f"{metric}:{match['number']}{percent}"))
    return ForgettingBudget(tuple(limits), ",".join(limit.text for limit in limits))


def analysis_budget(text: str | None) -> ForgettingBudget:
    """The budget the forgetting analysis tests against: ``text``, or the default when it is empty."""
    budget = parse_budget(text) or parse_budget(DEFAULT_FORGETTING_BUDGET)
    assert budget is not None
    return budget
