"""PNG charts of evaluation results, training logs and forgetting comparisons.

Every chart is drawn on its own :class:`matplotlib.figure.Figure` (no pyplot global state,
no display needed) and written atomically. Labels are Chinese only when a CJK font is
installed (see :mod:`zhlora.analysis.fonts`), otherwise English: never empty boxes.
Accuracies arrive as fractions in [0, 1] and are drawn in percent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zhlora.analysis import labels
from zhlora.analysis.fonts import boxed_characters, font_rc, resolve_chart_language
from zhlora.errors import DataError
from zhlora.io_utils import atomic_path, read_jsonl

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASE_COLOR = "#7f8c9d"
TUNED_COLOR = "#d9534f"
VERDICT_COLORS = {"improved": "#2e8b57", "forgot": "#c0392b", "no significant change": "#7f8c9d"}
DPI = 110

logger = logging.getLogger(__name__)


@dataclass
class _Canvas:
    figure: Figure
    axes: Any
    language: str


@contextlib.contextmanager
def _canvas(out_png: str | os.PathLike, language: str, figsize: tuple[float, float], **subplots) -> Iterator[_Canvas]:
    """Yield a figure drawn in ``language``'s fonts; save it atomically as PNG on success."""
    import matplotlib
    from matplotlib.figure import Figure

    resolved, family = resolve_chart_language(language)
    with matplotlib.rc_context(font_rc(family)):
        figure = Figure(figsize=figsize, layout="constrained")
        yield _Canvas(figure, figure.subplots(**subplots), resolved)
        # Text is laid out while saving, so the fonts above must still be active here.
        with atomic_path(out_png) as tmp:
            # "tight": the saved area grows to hold every label and legend (radar spokes, outside legends)
            figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
        boxed = boxed_characters(figure)
        if boxed:
            logger.warning("%s: these characters have no glyph in the chart's fonts and show as boxes: %s. Install a "
                           "CJK font (apt-get install fonts-noto-cjk) or pass --chart_language en.", out_png,
                           ", ".join(f"{char!r} ({font})" for char, font in sorted(boxed.items())))


def _pct(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def _radar(ax, axis_labels: Sequence[str], series: dict[str, Sequence[float]], colors: dict[str, str]) -> None:
    """Draw closed polygons of ``series`` (percent) on polar axes ``ax``, one spoke per label."""
    angles = np.linspace(0.0, 2 * math.pi, len(axis_labels), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    for name, values in series.items():
        data = np.asarray(values, dtype=float)
        data = np.concatenate([data, data[:1]])
        ax.plot(closed, data, color=colors.get(name), linewidth=1.8, label=name)
        ax.fill(closed, data, color=colors.get(name), alpha=0.15)
    ax.set_xticks(angles, list(axis_labels), fontsize=8)
    highest = np.nanmax([np.nanmax(np.asarray(v, dtype=float)) for v in series.values()])
    top = min(100.0, max(50.0, 10.0 * math.ceil(highest / 10.0) + 10.0))
    ticks = np.arange(10.0 if top <= 60 else 20.0, top + 0.1, 10.0 if top <= 60 else 20.0)
    ax.set_ylim(0.0, top)
    ax.set_yticks(ticks, [f"{t:.0f}" for t in ticks], fontsize=7)
    ax.set_rlabel_position(90.0 / max(1, len(axis_labels)))


def plot_radar(
    axis_labels: Sequence[str],
    series: dict[str, Sequence[float]],
    out_png: str | os.PathLike,
    *,
    title: str,
    colors: dict[str, str] | None = None,
    language: str = "auto",
) -> Path:
    """Radar chart: one spoke per label, one polygon per series (values in percent).

    ``title`` and ``axis_labels`` must already be in the resolved language (callers build
    them with :mod:`zhlora.analysis.labels`). Needs at least 3 spokes.
    """
    if len(axis_labels) < 3:
        raise ValueError(f"a radar chart needs at least 3 axes, got {len(axis_labels)}")
    with _canvas(out_png, language, (6.4, 5.6), subplot_kw={"projection": "polar"}) as canvas:
        ax = canvas.axes
        _radar(ax, axis_labels, series, colors or {})
        ax.set_title(title, fontsize=11, pad=18)
        if len(series) > 1:
            ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
    return Path(out_png)


def _accuracy_bars(results: dict, out_png: Path, language: str) -> Path:
    benchmarks = {
        name: entry
        for name, entry in results["benchmarks"].items()
        if entry.get("kind") in ("multiple_choice", "generate")
    }
    with _canvas(out_png, language, (6.4, 3.8)) as canvas:
        lang, ax = canvas.language, canvas.axes
        names = list(benchmarks)
        values = [_pct(benchmarks[name]["accuracy_micro"]) for name in names]
        bars = ax.bar(
            [labels.benchmark_label(n, lang) for n in names],
            values,
            color=TUNED_COLOR if results["model"].get("adapter_path") else BASE_COLOR,
        )
        for bar, name, value in zip(bars, names, values, strict=True):
            ax.annotate(
                f"{value:.1f}\nn={benchmarks[name]['n']}",
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        if any(benchmarks[n]["kind"] == "multiple_choice" for n in names):
            ax.axhline(25.0, color="#444444", linestyle=":", linewidth=1, label=labels.text("chance", lang))
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylim(0, max(100.0, *[v + 12 for v in values if not math.isnan(v)]) if values else 100.0)
        ax.set_ylabel(labels.text("accuracy_pct", lang))
        ax.set_title(labels.text("benchmark_accuracy", lang), fontsize=11)
    return out_png


def _subject_bars(name: str, entry: dict, out_png: Path, language: str) -> Path:
    subjects = sorted(entry["subjects"].items(), key=lambda item: item[1]["accuracy"])
    height = max(3.0, 0.22 * len(subjects) + 1.2)
    with _canvas(out_png, language, (7.0, height)) as canvas:
        lang, ax = canvas.language, canvas.axes
        names = [labels.subject_label(s, row.get("name_zh"), lang) for s, row in subjects]
        values = [_pct(row["accuracy"]) for _, row in subjects]
        ax.barh(names, values, color=BASE_COLOR)
        ax.axvline(25.0, color="#444444", linestyle=":", linewidth=1)
        ax.set_xlim(0, 100)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel(labels.text("accuracy_pct", lang))
        ax.set_title(labels.text("subject_accuracy", lang, benchmark=labels.benchmark_label(name, lang)), fontsize=11)
    return out_png


def plot_results_charts(results: dict, out_dir: str | os.PathLike, *, language: str = "auto") -> list[Path]:
    """Charts of one ``results.json``: benchmark accuracy bars, per-category radars, per-subject bars.

    Writes ``accuracy.png``; for each multiple-choice benchmark ``subjects_<name>.png`` and,
    when it has at least 3 categories, ``radar_<name>.png``. Returns the paths written.
    """
    out_dir = Path(out_dir)
    lang, _ = resolve_chart_language(language)
    written: list[Path] = []
    if any(e.get("kind") in ("multiple_choice", "generate") for e in results["benchmarks"].values()):
        written.append(_accuracy_bars(results, out_dir / "accuracy.png", lang))
    for name, entry in results["benchmarks"].items():
        if entry.get("kind") != "multiple_choice":
            continue
        categories = entry.get("categories") or {}
        if len(categories) >= 3:
            written.append(
                plot_radar(
                    [labels.category_label(c, lang) for c in categories],
                    {labels.benchmark_label(name, lang): [_pct(c["accuracy_micro"]) for c in categories.values()]},
                    out_dir / f"radar_{name}.png",
                    title=labels.text("category_accuracy", lang, benchmark=labels.benchmark_label(name, lang)),
                    colors={
                        labels.benchmark_label(name, lang): TUNED_COLOR
                        if results["model"].get("adapter_path")
                        else BASE_COLOR
                    },
                    language=lang,
                )
            )
        if entry.get("subjects"):
            written.append(_subject_bars(name, entry, out_dir / f"subjects_{name}.png", lang))
    return written


def _log_rows(training_log_path: str | os.PathLike, key: str) -> list[dict]:
    path = Path(training_log_path)
    if not path.is_file():
        raise DataError(
            f"Training log {path} does not exist. Train first (zhlora train) or pass the right --output_dir."
        )
    rows = [row for row in read_jsonl(path) if row.get(key) is not None and row.get("step") is not None]
    if not rows:
        raise DataError(f'Training log {path} has no rows with "{key}" and "step"; nothing to plot.')
    return sorted(rows, key=lambda row: row["step"])


def plot_loss_curve(
    training_log_path: str | os.PathLike, out_png: str | os.PathLike, *, language: str = "auto"
) -> Path:
    """Training loss (nats/token) against optimizer step, learning rate on a second axis.

    Reads ``training_log.jsonl`` rows ``{step, loss, learning_rate, ...}``; rows without a
    loss (e.g. probe rows) are ignored.
    """
    rows = _log_rows(training_log_path, "loss")
    with _canvas(out_png, language, (7.0, 3.8)) as canvas:
        lang, ax = canvas.language, canvas.axes
        steps = [row["step"] for row in rows]
        ax.plot(
            steps,
            [row["loss"] for row in rows],
            color=TUNED_COLOR,
            linewidth=1.6,
            marker="." if len(rows) < 40 else None,
        )
        ax.set_xlabel(labels.text("step", lang))
        ax.set_ylabel(labels.text("loss", lang))
        ax.grid(alpha=0.3)
        lr_rows = [row for row in rows if row.get("learning_rate") is not None]
        if lr_rows:
            lr_ax = ax.twinx()
            lr_ax.plot(
                [r["step"] for r in lr_rows],
                [r["learning_rate"] for r in lr_rows],
                color=BASE_COLOR,
                linewidth=1,
                linestyle="--",
            )
            lr_ax.set_ylabel(labels.text("learning_rate", lang), color=BASE_COLOR)
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.set_title(labels.text("loss_title", lang), fontsize=11)
    return Path(out_png)


def probe_chart_marks(monitoring: dict | None) -> dict:
    """The ``limits``/``selected_step`` marks of :func:`plot_probe_curves` from a run manifest's
    ``monitoring`` section: budget lines always, the exported step only when a budget chose it."""
    if not monitoring:
        return {"limits": None, "selected_step": None}
    budgeted = monitoring.get("forgetting_budget") is not None
    return {
        "limits": monitoring.get("budget_limit_values"),
        "selected_step": monitoring.get("selected_step") if budgeted else None,
    }


def plot_probe_curves(
    training_log_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    language: str = "auto",
    limits: dict[str, float] | None = None,
    selected_step: int | None = None,
) -> Path:
    """Probe values against optimizer step, one small panel per probe.

    Reads ``training_log.jsonl`` rows ``{step, probes: {name: value}}`` written by training
    monitoring: Chinese probes show learning, English probes show forgetting as it happens.
    ``limits`` (probe name -> the value at which the forgetting budget is reached, in the
    probe's own unit) draws a dashed line on those panels; ``selected_step`` (the step whose
    adapter a budget exported) a dotted vertical line on every panel.
    """
    rows = _log_rows(training_log_path, "probes")
    names = sorted({name for row in rows for name in row["probes"]})
    limits = {name: value for name, value in (limits or {}).items() if value is not None and name in names}
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    with _canvas(
        out_png, language, (3.4 * ncols, 2.6 * nrows + 0.6), nrows=nrows, ncols=ncols, squeeze=False, sharex=True
    ) as canvas:
        lang, grid = canvas.language, canvas.axes
        for index, name in enumerate(names):
            ax = grid[index // ncols][index % ncols]
            points = [(row["step"], row["probes"][name]) for row in rows if row["probes"].get(name) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=TUNED_COLOR, linewidth=1.4)
            if name in limits:
                ax.axhline(limits[name], color=VERDICT_COLORS["forgot"], linestyle="--", linewidth=1,
                           label=labels.text("budget_limit", lang))
            if selected_step is not None:
                ax.axvline(selected_step, color=VERDICT_COLORS["improved"], linestyle=":", linewidth=1.2,
                           label=labels.text("exported_step", lang, step=selected_step))
            # one legend says what the marks are: on the panels with a limit line, else on the first panel
            if name in limits or (selected_step is not None and index == 0 and not limits):
                ax.legend(fontsize=6, loc="best")
            ax.set_title(labels.safe_label(name, lang, f"probe {index + 1}"), fontsize=9)
            ax.grid(alpha=0.3)
            if index // ncols == nrows - 1:
                ax.set_xlabel(labels.text("step", lang), fontsize=8)
        for index in range(len(names), nrows * ncols):
            grid[index // ncols][index % ncols].set_visible(False)
        canvas.figure.suptitle(labels.text("probe_title", lang), fontsize=11)
    return Path(out_png)


def plot_change_bars(
    rows: Sequence[dict],
    out_png: str | os.PathLike,
    *,
    title: str,
    axis_label: str,
    language: str = "auto",
) -> Path:
    """Horizontal bars of the change (points) per row with its confidence interval as whiskers.

    ``rows`` are ``{label, delta, ci_low, ci_high, verdict}`` in points; bars are coloured by
    verdict. Labels must already be in the resolved language.
    """
    with _canvas(out_png, language, (7.0, max(2.4, 0.32 * len(rows) + 1.3))) as canvas:
        ax = canvas.axes
        positions = np.arange(len(rows))[::-1]
        deltas = np.array([row["delta"] for row in rows], dtype=float)
        low = deltas - np.array([row["ci_low"] for row in rows], dtype=float)
        high = np.array([row["ci_high"] for row in rows], dtype=float) - deltas
        colors = [VERDICT_COLORS.get(row["verdict"], BASE_COLOR) for row in rows]
        ax.barh(positions, deltas, color=colors, alpha=0.85)
        ax.errorbar(
            deltas, positions, xerr=np.vstack([low, high]), fmt="none", ecolor="#222222", capsize=3, linewidth=1
        )
        ax.axvline(0.0, color="#222222", linewidth=0.8)
        ax.set_yticks(positions, [row["label"] for row in rows], fontsize=8)
        ax.set_xlabel(axis_label)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        lang = canvas.language
        handles = [
            _legend_patch(VERDICT_COLORS[v], labels.text(v, lang))
            for v in VERDICT_COLORS
            if any(r["verdict"] == v for r in rows)
        ]
        ax.legend(handles=handles, fontsize=8, loc="lower right")
    return Path(out_png)


def _legend_patch(color: str, label: str):
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (maximise x, minimise y).

    With x = Chinese gain and y = English loss, these are the runs worth choosing between.
    Ties on both coordinates keep every tied point. Returned in ascending x order.
    """
    front = []
    for i, (x_i, y_i) in enumerate(points):
        dominated = any(
            (x_j >= x_i and y_j <= y_i) and (x_j > x_i or y_j < y_i) for j, (x_j, y_j) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def plot_tradeoff_scatter(
    points: Sequence[tuple[float, float]],
    names: Sequence[str],
    out_png: str | os.PathLike,
    *,
    language: str = "auto",
) -> Path:
    """Learning (x, Chinese gain in points) vs forgetting (y, English loss in points) of runs.

    The Pareto front (:func:`pareto_front`) is drawn as a line; each point is labelled.
    """
    if len(points) != len(names):
        raise ValueError("points and names must have the same length")
    with _canvas(out_png, language, (6.4, 4.6)) as canvas:
        lang, ax = canvas.language, canvas.axes
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.scatter(xs, ys, color=BASE_COLOR, zorder=3)
        for (x, y), name in zip(points, names, strict=True):
            ax.annotate(
                labels.safe_label(name, lang, "run"), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        front = pareto_front(points)
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            color=TUNED_COLOR,
            marker="o",
            label=labels.text("pareto", lang),
            zorder=4,
        )
        ax.set_xlabel(labels.text("learning_axis", lang))
        ax.set_ylabel(labels.text("forgetting_axis", lang))
        ax.set_title(labels.text("tradeoff_title", lang), fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Path(out_png)


def plot_heatmap(
    matrix: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    out_png: str | os.PathLike,
    *,
    title: str,
    row_title: str,
    col_title: str,
    language: str = "auto",
    value_format: str = "{:+.1f}",
) -> Path:
    """Annotated heatmap (e.g. LoRA rank x alpha -> English loss); missing cells are blank.

    Titles and labels must already be in the resolved language (ASCII is always safe).
    """
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    if data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {data.shape} does not match {len(row_labels)} rows x {len(col_labels)} columns")
    with _canvas(out_png, language, (1.2 * len(col_labels) + 2.6, 0.8 * len(row_labels) + 1.8)) as canvas:
        ax = canvas.axes
        limit = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
        image = ax.imshow(data, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for (r, c), value in np.ndenumerate(data):
            if np.isfinite(value):
                ax.text(c, r, value_format.format(value), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(col_labels)), list(col_labels))
        ax.set_yticks(range(len(row_labels)), list(row_labels))
        ax.set_xlabel(col_title)
        ax.set_ylabel(row_title)
        ax.set_title(title, fontsize=11)
        canvas.figure.colorbar(image, ax=ax, shrink=0.8)
    return Path(out_png)


def plot_adapter_scale_curve(rows: Sequence[dict], out_png: str | os.PathLike, *, language: str = "auto") -> Path:
    """Learning and forgetting of one adapter evaluated at several scales of its update.

    ``rows`` (one per scale, ascending) hold ``scale``, ``zh_delta_points``/``en_delta_points``
    with ``*_ci_low_points``/``*_ci_high_points`` (accuracy change vs the base model, points)
    and ``ppl_zh``/``ppl_en`` (relative change, 0.1 = +10%, of bits per byte when every row's
    ``ppl_unit`` is "bits per byte", else of per-token perplexity); None values are skipped.
    Left panel: accuracy changes with CI bars; right panel: the perplexity changes in percent,
    titled with their unit (bits per byte compares Chinese with English; per-token perplexity does not).
    """
    colors = {"zh": TUNED_COLOR, "en": "#2c7fb8"}
    dodge = {"zh": -0.006, "en": 0.006}  # fraction of the scale range: keeps overlapping CI bars apart
    spread = (max(r["scale"] for r in rows) - min(r["scale"] for r in rows)) or 1.0
    with _canvas(out_png, language, (10.0, 4.0), ncols=2) as canvas:
        lang, (acc_ax, ppl_ax) = canvas.language, canvas.axes
        for side in ("zh", "en"):
            label = labels.text("chinese" if side == "zh" else "english", lang)
            points = [r for r in rows if r.get(f"{side}_delta_points") is not None]
            if points:
                values = np.array([r[f"{side}_delta_points"] for r in points])
                low = np.array([r[f"{side}_ci_low_points"] for r in points])
                high = np.array([r[f"{side}_ci_high_points"] for r in points])
                acc_ax.errorbar(
                    [r["scale"] + dodge[side] * spread for r in points],
                    values,
                    yerr=[values - low, high - values],
                    marker="o",
                    capsize=3,
                    color=colors[side],
                    label=label,
                )
            ppl = [r for r in rows if r.get(f"ppl_{side}") is not None]
            if ppl:
                ppl_ax.plot(
                    [r["scale"] for r in ppl],
                    [100.0 * r[f"ppl_{side}"] for r in ppl],
                    marker="o",
                    color=colors[side],
                    label=label,
                )
        per_byte = all(r.get("ppl_unit") == "bits per byte" for r in rows)
        ppl_title = "scale_bits_title" if per_byte else "scale_perplexity_title"
        for ax, title in ((acc_ax, "scale_accuracy_title"), (ppl_ax, ppl_title)):
            ax.axhline(0.0, color=BASE_COLOR, linewidth=0.8)
            ax.set_xlabel(labels.text("scale_axis", lang), fontsize=8)
            ax.set_title(labels.text(title, lang), fontsize=10)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    return Path(out_png)


METHOD_MARKERS = {"lora": "o", "dora": "s", "rslora": "^", "pissa": "D", "full": "X"}


def plot_learning_forgetting(
    series: Sequence[dict],
    out_png: str | os.PathLike,
    *,
    budget_pct: float | None = None,
    language: str = "auto",
) -> Path:
    """Learning (x) vs forgetting (y) trajectories, in % change of bits per byte (see
    :mod:`zhlora.analysis.trajectories`).

    ``series``: ``{"name", "method", "points": [{learning_pct, forgetting_pct, step}], "final":
    {learning_pct, forgetting_pct} | None}``; a trajectory joins one run's monitored evaluations in
    step order, its final evaluation is a star. Methods get their own markers, the Pareto front over
    every point (most learning for the least forgetting) is drawn, and ``budget_pct`` shades the
    region beyond the forgetting budget.
    """
    import matplotlib

    colors = matplotlib.colormaps["tab10"]
    with _canvas(out_png, language, (6.4, 4.6)) as canvas:
        lang, ax = canvas.language, canvas.axes
        everything = []
        for index, run in enumerate(series):
            color = colors(index % 10)
            marker = METHOD_MARKERS.get(run.get("method", "lora"), "o")
            xs = [p["learning_pct"] for p in run["points"]]
            ys = [p["forgetting_pct"] for p in run["points"]]
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, markersize=4, linewidth=1.2,
                        label=labels.safe_label(run["name"], lang, "run"))
            if run.get("final"):
                ax.scatter([run["final"]["learning_pct"]], [run["final"]["forgetting_pct"]], color=color, marker="*",
                           s=110, zorder=5, edgecolors="black", linewidths=0.4,
                           label=None if xs else labels.safe_label(run["name"], lang, "run"))
            everything += list(zip(xs, ys, strict=True))
        if everything:
            front = sorted((everything[i] for i in pareto_front([(x, -y) for x, y in everything])), key=lambda p: p[0])
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linestyle="--", linewidth=1,
                    label=labels.text("pareto", lang), zorder=2)
        ax.axhline(0.0, color=BASE_COLOR, linewidth=0.6)
        ax.axvline(0.0, color=BASE_COLOR, linewidth=0.6)
        if budget_pct is not None:
            top = max([budget_pct * 1.5] + [p[1] for p in everything] +
                      [r["final"]["forgetting_pct"] for r in series if r.get("final")])
            ax.axhspan(budget_pct, top * 1.05 if top > 0 else budget_pct + 1, color=TUNED_COLOR, alpha=0.08,
                       label=labels.text("budget_band", lang))
            ax.axhline(budget_pct, color=TUNED_COLOR, linewidth=0.8, linestyle=":")
        ax.scatter([], [], marker="*", color="grey", s=80, label=labels.text("final_evaluation", lang))
        ax.set_xlabel(labels.text("learning_bpb_axis", lang), fontsize=9)
        ax.set_ylabel(labels.text("forgetting_bpb_axis", lang), fontsize=9)
        ax.set_title(labels.text("trajectory_title", lang), fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Path(out_png)


def plot_weight_change(summary: dict, out_png: str | os.PathLike, *, language: str = "auto") -> Path:
    """Rank at 90% of ‖ΔW‖² (median and max over layers) and mean ‖ΔW‖/‖W‖, per module type."""
    kinds = list(summary["by_type"])
    with _canvas(out_png, language, (10.0, 3.8), ncols=2) as canvas:
        lang, (left, right) = canvas.language, canvas.axes
        positions = np.arange(len(kinds))
        medians = [summary["by_type"][k]["rank90_median"] for k in kinds]
        maxima = [summary["by_type"][k]["rank90_max"] for k in kinds]
        left.bar(positions, medians, color=TUNED_COLOR, alpha=0.8, label=labels.text("median", lang))
        left.scatter(positions, maxima, color="black", marker="_", s=200, zorder=3, label=labels.text("maximum", lang))
        if summary.get("lora_rank"):
            left.axhline(summary["lora_rank"], color=BASE_COLOR, linestyle=":", label=f"LoRA r = {summary['lora_rank']}")
        left.set_xticks(positions, [k.removesuffix("_proj") for k in kinds], fontsize=8)
        left.set_title(labels.text("rank90_title", lang), fontsize=11)
        left.legend(fontsize=8)
        norms = [summary["by_type"][k]["relative_norm_mean"] or 0.0 for k in kinds]
        right.bar(positions, norms, color=BASE_COLOR)
        right.set_xticks(positions, [k.removesuffix("_proj") for k in kinds], fontsize=8)
        right.set_title(labels.text("relative_norm_title", lang), fontsize=11)
        for ax in (left, right):
            ax.grid(axis="y", alpha=0.3)
    return Path(out_png)
