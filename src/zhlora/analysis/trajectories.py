"""Learning–forgetting trajectories: where a run stood after each monitored evaluation during training.

Each point is one evaluation of the forgetting probes (``--monitor_every``) relative to step 0:

- learning ``x``: the relative drop of the Chinese held-out loss (``zh_loss``), in percent;
- forgetting ``y``: the relative rise of the English text loss, ln(en_ppl) / ln(en_ppl at step 0) − 1,
  in percent.

Both are relative changes of a summed negative log-likelihood on fixed text, so they equal the
relative change of that text's bits per byte (the byte count cancels): the units of the final
evaluation's ``ppl_zh``/``ppl_en`` bits-per-byte rows, comparable across tokenizers and methods
(Biderman et al. 2024 plot the same two axes). The budget ``ppl:r`` is the line
y = ln(1 + r) / ln(en_ppl at step 0).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from zhlora.forgetting_budget import ForgettingBudget
from zhlora.io_utils import read_jsonl


def probe_trajectory(training_log: str | os.PathLike) -> list[dict]:
    """``[{step, learning_pct, forgetting_pct}]`` from the probe rows of a ``training_log.jsonl``
    (empty without a step-0 row holding both ``zh_loss`` and ``en_ppl``)."""
    path = Path(training_log)
    if not path.is_file():
        return []
    rows = sorted((row for row in read_jsonl(path) if row.get("probes") and row.get("step") is not None),
                  key=lambda row: row["step"])
    start = next((row["probes"] for row in rows if row["step"] == 0), None)
    if not start or not start.get("zh_loss") or not start.get("en_ppl") or start["en_ppl"] <= 1.0:
        return []
    points = []
    for row in rows:
        zh, en = row["probes"].get("zh_loss"), row["probes"].get("en_ppl")
        if zh is None or en is None or en <= 0:
            continue
        points.append({"step": row["step"], "learning_pct": 100.0 * (1.0 - zh / start["zh_loss"]),
                       "forgetting_pct": 100.0 * (math.log(en) / math.log(start["en_ppl"]) - 1.0)})
    return points


def start_en_ppl(training_log: str | os.PathLike) -> float | None:
    """The English perplexity probe at step 0 of a monitored run (None without monitoring)."""
    if not Path(training_log).is_file():
        return None
    return next((row["probes"].get("en_ppl") for row in read_jsonl(Path(training_log))
                 if row.get("step") == 0 and row.get("probes")), None)


def budget_line_pct(budget: ForgettingBudget, en_ppl_at_start: float | None) -> float | None:
    """The forgetting axis value of the budget's ``ppl`` bound, ln(1 + r) / ln(en_ppl at step 0) (None without one)."""
    limit = next((limit.limit for limit in budget.limits if limit.metric == "ppl"), None)
    if limit is None or not en_ppl_at_start or en_ppl_at_start <= 1.0:
        return None
    return 100.0 * math.log1p(limit) / math.log(en_ppl_at_start)


def final_point(forgetting: dict) -> dict | None:
    """The final evaluation's point in the same units: the relative change of bits per byte
    (``ppl_zh`` drop, ``ppl_en`` rise), or None when either lacks byte counts."""
    rows = {row["benchmark"]: row for row in forgetting.get("perplexity", [])}
    zh = ((rows.get("ppl_zh") or {}).get("units") or {}).get("bits_per_byte")
    en = ((rows.get("ppl_en") or {}).get("units") or {}).get("bits_per_byte")
    if zh is None or en is None:
        return None
    return {"learning_pct": -100.0 * zh["relative_change"], "forgetting_pct": 100.0 * en["relative_change"]}


def run_series(name: str, training_log: str | os.PathLike, forgetting: dict | None, method: str = "lora") -> dict:
    """One run's entry for :func:`zhlora.analysis.charts.plot_learning_forgetting`."""
    return {"name": name, "method": method, "points": probe_trajectory(training_log),
            "final": final_point(forgetting) if forgetting else None}
