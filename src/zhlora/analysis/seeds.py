"""Training-seed variation: the same LoRA configuration trained with several seeds.

One run's change mixes the method's effect with the luck of one seed (adapter initialisation,
data order, dropout). The paired CI of a run says how much its *evaluation items* could move
the number; the spread between seeds says how much *retraining* moves it. A difference
between two configurations is only worth reporting when it exceeds both. Method:
docs/analysis.md §11.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from zhlora.analysis.labels import benchmark_label
from zhlora.analysis.sections import Section, Table, table_section


def _measures(forgetting: dict) -> dict[str, dict]:
    """The changes of one comparison that seeds are compared on, with their within-run interval.

    Accuracy benchmarks (points), the Chinese and English side means (points), and each
    perplexity probe's bits-per-byte relative change (percent; per-token perplexity for older results).
    """
    out: dict[str, dict] = {}
    for row in forgetting["rows"]:
        if row["level"] == "benchmark":
            out[row["benchmark"]] = {"label": benchmark_label(row["benchmark"]), "unit": "points",
                                     "change": row["delta_points"], "ci": (row["ci_low_points"], row["ci_high_points"])}
    for side, label in (("chinese", "Chinese mean"), ("english", "English mean")):
        entry = forgetting["headline"].get(side) or {}
        if entry.get("benchmarks"):
            out[side] = {"label": label, "unit": "points", "change": entry["delta_points"],
                         "ci": (entry["ci_low_points"], entry["ci_high_points"])}
    for row in forgetting.get("perplexity", []):
        bpb = (row.get("units") or {}).get("bits_per_byte")
        figure, label = (bpb, "bits per byte") if bpb else (row, "perplexity per token")
        ci = (100 * figure["ci_low"], 100 * figure["ci_high"]) if figure.get("ci_low") is not None else None
        out[row["benchmark"]] = {"label": f"{benchmark_label(row['benchmark'])} {label}", "unit": "%",
                                 "change": 100 * figure["relative_change"], "ci": ci}
    return out


def seed_summary(forgettings: Sequence[tuple[int, dict]]) -> dict:
    """Per measure: the change of every seed, their mean and sample standard deviation, and the
    within-run paired interval of every seed.

    ``forgettings`` are ``(seed, forgetting.json dict)`` pairs, the run's own seed first. The
    spread is the sample SD (n − 1 in the denominator) of the per-seed changes; with 3 seeds it is
    itself uncertain (the true SD lies between about 0.5x and 6.3x the observed one, 95%, from the
    χ² distribution with 2 degrees of freedom), which the report says.
    """
    if len(forgettings) < 2:
        raise ValueError("the spread between seeds needs at least two seeds")
    per_seed = [(seed, _measures(forgetting)) for seed, forgetting in forgettings]
    rows = []
    for key, first in per_seed[0][1].items():
        if not all(key in measures for _, measures in per_seed):
            continue
        changes = [measures[key]["change"] for _, measures in per_seed]
        rows.append({
            "measure": key, "label": first["label"], "unit": first["unit"],
            "changes": {str(seed): measures[key]["change"] for seed, measures in per_seed},
            "mean": statistics.fmean(changes), "sd": statistics.stdev(changes),
            "within_run_ci": {str(seed): measures[key]["ci"] for seed, measures in per_seed},
        })
    return {"seeds": [seed for seed, _ in forgettings], "rows": rows}


def _value(value: float, unit: str) -> str:
    return f"{value:+.1f}" + ("%" if unit == "%" else "")


def seeds_section(summary: dict, confidence: float) -> Section:
    """The report section: each change per seed, mean ± between-seed SD, and the within-run CI."""
    seeds = summary["seeds"]
    headers = ["measure", *(f"seed {s}" for s in seeds), "mean ± SD between seeds",
               f"within-run {confidence:.0%} CI (seed {seeds[0]})"]
    cells = []
    for row in summary["rows"]:
        ci = row["within_run_ci"][str(seeds[0])]
        unit = row["unit"]
        cells.append([
            f"{row['label']} ({'points' if unit == 'points' else 'relative change'})",
            *(_value(row["changes"][str(s)], unit) for s in seeds),
            f"{_value(row['mean'], unit)} ± {row['sd']:.1f}",
            "—" if ci is None else f"[{_value(ci[0], unit)}, {_value(ci[1], unit)}]",
        ])
    intro = (
        f"The same configuration trained with {len(seeds)} seeds ({', '.join(map(str, seeds))}), each evaluated "
        "and compared with the same baseline. The within-run interval says how far the evaluation items could move "
        "one run's change; the standard deviation between seeds says how far retraining moves it. A difference "
        "between two configurations smaller than about twice the larger of the two is not evidence. With few seeds "
        "the SD is rough: with 3 seeds the true spread lies between about 0.5x and 6.3x the observed SD (95%)."
    )
    return table_section("Training seeds", intro, [("", Table(headers, cells))], "seeds")
