"""Reports over finished comparisons: learning vs forgetting, adapter-scale curves, sweep summaries, run listings.

Everything here reads result files only (never a model); charts come from :mod:`zhlora.analysis.charts`.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zhlora.analysis.results_io import load_forgetting, load_results
from zhlora.analysis.trajectories import final_point
from zhlora.errors import DataError, ZhloraError
from zhlora.experiment.layout import WorkLayout, number_tag, scale_results_name
from zhlora.filenames import (
    BASELINE_NAME,
    DATA_DIRNAME,
    EVAL_DIRNAME,
    FORGETTING_FILE,
    PROCESSED_STATS,
    REPORT_HTML,
    RESULTS_FILE,
    RUN_MANIFEST,
    RUNS_DIRNAME,
    SWEEP_SUMMARY,
    SWEEP_SUMMARY_MD,
    TRAINING_LOG,
)
from zhlora.io_utils import atomic_write_json, atomic_write_text, provenance


def tradeoff_numbers(forgetting: dict) -> dict:
    """Learning and forgetting of one comparison (points and ratios from ``forgetting.json``).

    ``zh_*``/``en_*``: mean accuracy change of the Chinese / English benchmarks in points, with
    the CI bounds; ``ppl_zh``/``ppl_en``: relative change (0.1 = +10%) of bits per byte, which
    compares across languages and tokenizers, or of per-token perplexity for results without
    byte counts; ``ppl_unit`` says which.
    """
    out: dict = {}
    for side, key in (("chinese", "zh"), ("english", "en")):
        entry = forgetting["headline"].get(side, {})
        for name in ("delta_points", "ci_low_points", "ci_high_points"):
            out[f"{key}_{name}"] = entry.get(name)
    by_name = {row["benchmark"]: row for row in forgetting.get("perplexity", [])}
    bpb = {name: (row.get("units") or {}).get("bits_per_byte") for name, row in by_name.items()}
    per_byte = bool(by_name) and all(bpb.values())
    for name in ("ppl_zh", "ppl_en"):
        if name not in by_name:
            out[name] = None
        else:
            out[name] = bpb[name]["relative_change"] if per_byte else by_name[name]["relative_change"]
    out["ppl_unit"] = PER_BYTE if per_byte else PER_TOKEN
    out["accuracy_at_chance"] = accuracy_at_chance(forgetting)
    final = final_point(forgetting)
    out["learning_pct"], out["forgetting_pct"] = (final["learning_pct"], final["forgetting_pct"]) if final else (None, None)
    out["budget"] = (forgetting.get("budget") or {}).get("text")
    answers = forgetting.get("hypotheses") or {}
    out["H1"], out["H2"] = (answers.get("H1") or {}).get("verdict"), (answers.get("H2") or {}).get("verdict")
    return out


# How close to guessing a benchmark's accuracy must stay to count as "at chance": within this many
# points of 1 / choices (4-choice: 25%; generation: 0%).
CHANCE_BAND_POINTS = 5.0


def accuracy_at_chance(forgetting: dict) -> bool:
    """Whether every benchmark's base and tuned accuracy sit within :data:`CHANCE_BAND_POINTS` of guessing:
    then accuracy changes are noise and bits per byte is the measure to compare trials by."""
    specs = forgetting.get("settings", {}).get("benchmarks", {})
    rows = [row for row in forgetting.get("rows", []) if row["level"] == "benchmark"]
    if not rows:
        return False
    for row in rows:
        chance = 25.0 if specs.get(row["benchmark"], {}).get("kind") == "multiple_choice" else 0.0
        if max(row["base_pct"], row["tuned_pct"]) > chance + CHANCE_BAND_POINTS:
            return False
    return True


PER_BYTE, PER_TOKEN = "bits per byte", "perplexity per token"


def seed_mean_and_spread(rows: Sequence[dict]) -> dict:
    """:func:`tradeoff_numbers` of several seeds of one trial: means, and the SD between seeds (``*_sd``)."""
    out = dict(rows[0])
    for key in ("zh_delta_points", "en_delta_points", "ppl_zh", "ppl_en"):
        values = [row[key] for row in rows if row.get(key) is not None]
        if len(values) == len(rows):
            out[key] = statistics.fmean(values)
            out[f"{key}_sd"] = statistics.stdev(values)
    return out


def scale_curve(layout: WorkLayout, run_name: str, scales: Sequence[float]) -> list[dict]:
    """One row of :func:`tradeoff_numbers` per adapter scale of a run (its compare must be done)."""
    from zhlora.analysis.results_io import load_forgetting

    rows = []
    for scale in scales:
        forgetting = load_forgetting(layout.eval_dir(scale_results_name(run_name, scale)) / FORGETTING_FILE)
        rows.append({"scale": scale, **tradeoff_numbers(forgetting)})
    return rows


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _ci(row: dict, key: str) -> str:
    low, high = row.get(f"{key}_ci_low_points"), row.get(f"{key}_ci_high_points")
    return "—" if low is None or high is None else f"[{low:+.1f}, {high:+.1f}]"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}%"


def _with_spread(text: str, row: dict, key: str, scale: float = 1.0) -> str:
    spread = row.get(f"{key}_sd")
    return text if spread is None or text == "—" else f"{text} ± {scale * spread:.1f}"


def _tradeoff_cells(row: dict) -> list[str]:
    return [_with_spread(_points(row["zh_delta_points"]), row, "zh_delta_points"), _ci(row, "zh"),
            _with_spread(_points(row["en_delta_points"]), row, "en_delta_points"), _ci(row, "en"),
            _with_spread(_percent(row["ppl_zh"]), row, "ppl_zh", 100.0),
            _with_spread(_percent(row["ppl_en"]), row, "ppl_en", 100.0)]


def _tradeoff_headers(confidence: float, rows: Sequence[dict] = ()) -> list[str]:
    ci = f"{confidence:.0%} CI"
    unit = "bits/byte" if rows and all(r.get("ppl_unit") == PER_BYTE for r in rows) else "PPL"
    return ["Chinese Δ (points)", ci, "English Δ (points)", ci, f"{unit} zh change", f"{unit} en change"]


def scale_curve_section(rows: Sequence[dict], out_dir: Path, confidence: float, language: str):
    """The report section of an adapter-scale curve: the chart and a table, one row per scale."""
    from zhlora.analysis.charts import plot_adapter_scale_curve
    from zhlora.analysis.sections import Section, Table, charts_section

    chart = plot_adapter_scale_curve(rows, out_dir / "report_adapter_scales.png", language=language)
    table = Table(["adapter scale", *_tradeoff_headers(confidence, rows)],
                  [[number_tag(row["scale"]), *_tradeoff_cells(row)] for row in rows])
    intro = ("The same adapter evaluated with its update scaled by s (s = 0 is the base model, 1 the trained adapter): "
             "how learning and forgetting grow with the size of the update, without retraining.")
    charts = charts_section("Adapter scale", [("Learning and forgetting vs adapter scale", chart)], out_dir, anchor="scales")
    md = f"{charts.markdown}\n{intro}\n\n{table.markdown()}"
    htm = f"{charts.html}\n<p>{intro}</p>\n{table.html()}"
    return Section("Adapter scale", md, htm, "scales")


def replay_section(stats_file: Path):
    """The report section on English replay (asked vs effective ratio), or None without replay."""
    import html

    from zhlora.analysis.sections import Section

    try:
        replay = json.loads(stats_file.read_text(encoding="utf-8")).get("replay") or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if not replay.get("requested"):
        return None
    text = (f"Training mixed in {replay['used']:,} English instruction rows (alpaca) for --replay_ratio "
            f"{replay['ratio']:g}, which asked for {replay['requested']:,}: the effective replay ratio is "
            f"{replay.get('effective_ratio', 0):.3f}.")
    if replay["used"] < replay["requested"]:
        text += " Fewer English rows existed than the ratio needs, so the run replayed less English than asked."
    return Section("Replay", f"## Replay\n\n{text}", f'<h2 id="replay">Replay</h2>\n<p>{html.escape(text)}</p>', "replay")


def write_run_report_html(
    layout: WorkLayout,
    run_name: str,
    scales: Sequence[float],
    language: str,
    confidence: float,
    processed_dir: Path | None = None,
    seed_runs: Sequence[tuple[int, str]] = (),
) -> Path:
    """Write the run's ``report.html``/``report.md`` (with the adapter-scale curve when there are several
    scales, the effective replay ratio when ``processed_dir``'s stats.json records replay, and the
    spread between training seeds, ``seeds.json``, when ``seed_runs`` lists several ``(seed, run name)``)."""
    from zhlora.analysis.report import write_report
    from zhlora.analysis.results_io import load_forgetting
    from zhlora.analysis.seeds import seed_summary, seeds_section

    out_dir = layout.eval_dir(run_name)
    forgetting = load_forgetting(out_dir / FORGETTING_FILE)
    extra = []
    if len(seed_runs) > 1:
        summary = seed_summary([(seed, load_forgetting(layout.eval_dir(name) / FORGETTING_FILE))
                                for seed, name in seed_runs])
        atomic_write_json(out_dir / "seeds.json", {"provenance": provenance(), "runs": dict(
            (str(seed), name) for seed, name in seed_runs), **summary})
        extra.append(seeds_section(summary, confidence))
    if len(scales) > 1:
        rows = scale_curve(layout, run_name, scales)
        atomic_write_json(out_dir / "adapter_scales.json", {"provenance": provenance(), "rows": rows})
        extra.append(scale_curve_section(rows, out_dir, confidence, language))
    replay = replay_section(processed_dir / PROCESSED_STATS) if processed_dir is not None else None
    if replay is not None:
        extra.append(replay)
    training_log = layout.run_dir(run_name) / TRAINING_LOG
    return write_report(out_dir, forgetting, base_dir=layout.eval_dir(BASELINE_NAME), tuned_dir=out_dir,
                        training_log=training_log if training_log.is_file() else None, extra_sections=extra,
                        language=language)


def _heatmaps(summary: dict, done: list[dict], out_dir: Path, language: str) -> list[tuple[str, Path]]:
    """Rank x alpha heatmaps of the Chinese and English accuracy changes, one pair per dropout and replay ratio."""
    from zhlora.analysis.charts import plot_heatmap

    grid = summary["grid"]
    charts = []
    for dropout, replay in itertools.product(grid["lora_dropouts"], grid["replay_ratios"]):
        cells = {(r["lora_rank"], r["lora_alpha"]): r for r in done
                 if r.get("method", "lora") == "lora" and r["lora_dropout"] == dropout and r["replay_ratio"] == replay}
        if not cells:
            continue
        suffix = f"dropout {number_tag(dropout)}" + (f", replay {number_tag(replay)}" if replay else "")
        # Signed changes on both maps: blue = gained, red = lost (plot_heatmap's diverging scale).
        for key, title in (("zh_delta_points", "Chinese accuracy change (points)"),
                           ("en_delta_points", "English accuracy change (points)")):
            matrix = [[None if (cell := cells.get((rank, alpha))) is None or cell[key] is None else cell[key]
                       for alpha in grid["lora_alphas"]] for rank in grid["lora_ranks"]]
            if all(v is None for row in matrix for v in row):
                continue
            name = f"heatmap_{key[:2]}_d{number_tag(dropout)}" + (f"_replay{number_tag(replay)}" if replay else "") + ".png"
            path = plot_heatmap(matrix, [str(r) for r in grid["lora_ranks"]], [number_tag(a) for a in grid["lora_alphas"]],
                                out_dir / name, title=f"{title}, {suffix}", row_title="LoRA rank",
                                col_title="LoRA alpha", language=language)
            charts.append((f"{title} by rank x alpha, {suffix}", path))
    return charts


def learning_forgetting_chart(summary: dict, rows: list[dict], out_dir: Path, language: str) -> tuple[str, Path]:
    """Every trial's trajectory through its monitored steps (and its final evaluation) in bits per byte."""
    from zhlora.analysis.charts import plot_learning_forgetting
    from zhlora.analysis.trajectories import budget_line_pct
    from zhlora.forgetting_budget import analysis_budget

    series = [{"name": row["name"].removeprefix(f"{summary['run_name']}-"), "method": row.get("method", "lora"),
               "points": row.get("trajectory") or [],
               "final": {"learning_pct": row["learning_pct"], "forgetting_pct": row["forgetting_pct"]}} for row in rows]
    start = next((row["en_ppl_start"] for row in rows if row.get("en_ppl_start")), None)  # the same probe set in every trial
    budget_pct = budget_line_pct(analysis_budget(rows[0].get("budget")), start)
    path = plot_learning_forgetting(series, out_dir / "learning_forgetting.png", budget_pct=budget_pct, language=language)
    return ("Learning vs forgetting, bits per byte: each trial's monitored steps joined, its final evaluation a star; "
            "the Pareto front over every point; shaded: beyond the forgetting budget", path)


def write_sweep_summary(summary: dict, out_dir: Path, language: str = "auto") -> Path:
    """Write ``summary.json``, ``summary.md``, ``report.html`` and charts of a sweep; return the HTML path.

    The trade-off scatter shows every complete trial (x: Chinese gain, y: English loss, both in
    accuracy points) with its Pareto front; heatmaps show both by rank x alpha.
    """
    from zhlora.analysis.charts import pareto_front, plot_tradeoff_scatter
    from zhlora.analysis.report import render_html, render_markdown
    from zhlora.analysis.sections import Section, Table, charts_section

    out_dir.mkdir(parents=True, exist_ok=True)
    done = [row for row in summary["trials"] if row["status"].startswith("complete")]
    plotted = [row for row in done if row["zh_delta_points"] is not None and row["en_delta_points"] is not None]
    points = [(row["zh_delta_points"], -row["en_delta_points"]) for row in plotted]
    front = {plotted[i]["name"] for i in pareto_front(points)}
    charts = []
    by_bytes = [row for row in done if row.get("learning_pct") is not None]
    at_chance = bool(done) and all(row.get("accuracy_at_chance") for row in done)
    if by_bytes and (at_chance or not plotted):  # the front in the units that carry the signal: bits per byte
        front = {by_bytes[i]["name"] for i in pareto_front([(r["learning_pct"], -r["forgetting_pct"]) for r in by_bytes])}
    if by_bytes:
        charts.append(learning_forgetting_chart(summary, by_bytes, out_dir, language))
    if plotted and not (at_chance and by_bytes):  # accuracy at chance is noise: the bits-per-byte chart replaces it
        charts.append(("Learning vs forgetting of every complete trial, accuracy points (Pareto front joined)",
                       plot_tradeoff_scatter(points, [row["name"].removeprefix(f"{summary['run_name']}-") for row in plotted],
                                             out_dir / "tradeoff.png", language=language)))
    charts += _heatmaps(summary, done, out_dir, language)
    table = Table(
        ["trial", "method", "rank", "alpha", "dropout", "replay", *_tradeoff_headers(summary["confidence"], done),
         "rank at 90% of ΔW", "H1", "H2", "Pareto", "status"],
        [[row["name"], row.get("method", "lora"), *(("—", "—", "—") if row["lora_rank"] is None else (
            str(row["lora_rank"]), number_tag(row["lora_alpha"]), number_tag(row["lora_dropout"]))),
          number_tag(row["replay_ratio"]),
          *(_tradeoff_cells(row) if row["status"].startswith("complete") else ["—"] * 6),
          "—" if row.get("rank90_median") is None else f"{row['rank90_median']:g}",
          row.get("H1") or "—", row.get("H2") or "—",
          "★" if row["name"] in front else "", row["status"]] for row in summary["trials"]],
    )
    intro = (f"{len(done)} of {len(summary['trials'])} trials complete in {summary['work_dir']}, each compared with the "
             "same baseline. Chinese Δ / English Δ: mean accuracy change of C-Eval+CMMLU / MMLU+GSM8K in points with "
             "paired score intervals (Tango; MOVER for the mean); bits/byte (or PPL for results without byte counts): "
             "relative change of the probe's bits per byte, which compares across tokenizers; ± = SD between training "
             "seeds (intervals of the first seed) when the trials were trained with --seeds. ★ = on the Pareto front (no other trial "
             "learns more Chinese while losing less English).")
    trials_section = Section("Trials", f"## Trials\n\n{intro}\n\n{table.markdown()}",
                             f'<h2 id="trials">Trials</h2>\n<p>{intro}</p>\n{table.html()}', "trials")
    sections = [trials_section] + ([charts_section("Charts", charts, out_dir)] if charts else [])
    title = f"zhlora sweep: {summary['run_name']}"
    atomic_write_text(out_dir / SWEEP_SUMMARY_MD, render_markdown(title, sections))
    html = atomic_write_text(out_dir / REPORT_HTML, render_html(title, sections))
    atomic_write_json(out_dir / SWEEP_SUMMARY, summary)  # last: the sweep's summary is complete once it exists
    return html


def runs_overview(work_dir: str | os.PathLike) -> list[dict]:
    """Every run and evaluation in a work folder: name, status and headline, from its files only.

    Works for folders made by ``zhlora run``/``sweep`` and by the individual verbs alike.
    """
    from zhlora.training.checkpoint import list_checkpoints

    layout = WorkLayout(root=Path(work_dir), data_dir=Path(work_dir) / DATA_DIRNAME)
    if not layout.root.is_dir():
        raise ZhloraError(f"{layout.root} is not a folder. Pass a work folder made by `zhlora run` (default: zhlora_work).")
    names = sorted({p.name for p in (layout.root / RUNS_DIRNAME).glob("*") if p.is_dir()}
                   | {p.name for p in (layout.root / EVAL_DIRNAME).glob("*") if p.is_dir()})
    rows = []
    for name in names:
        run_dir, eval_dir = layout.run_dir(name), layout.eval_dir(name)
        row: dict[str, Any] = {"name": name, "headline": None}
        if (eval_dir / FORGETTING_FILE).is_file():
            try:
                row["headline"] = load_forgetting(eval_dir / FORGETTING_FILE)["headline"]["text"]
                row["status"] = "compared"
            except DataError as exc:  # one damaged run must not hide the others: its row says what is wrong
                row["status"], row["headline"] = "compared, but its forgetting.json is damaged", str(exc)
        elif (eval_dir / RESULTS_FILE).is_file():
            try:
                load_results(eval_dir)
                row["status"] = "evaluated"
            except DataError as exc:
                row["status"], row["headline"] = "evaluated, but its results.json is damaged", str(exc)
        elif eval_dir.is_dir():
            row["status"] = "evaluation incomplete"
        elif (run_dir / RUN_MANIFEST).is_file():
            row["status"] = "trained, not evaluated"
        elif run_dir.is_dir():
            checkpoints = list_checkpoints(run_dir)
            row["status"] = f"training (checkpoint-{checkpoints[-1][0]})" if checkpoints else "training, no checkpoint yet"
        rows.append(row)
    return rows
