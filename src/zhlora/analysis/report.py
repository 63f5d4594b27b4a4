"""``report.html`` and ``report.md`` of a compared base/tuned pair.

The HTML is self-contained: styles and charts (base64 PNG) are inline, nothing is fetched, so
it opens offline and can be mailed as one file. Both files are built from the same
:class:`~zhlora.analysis.sections.Section` list; callers (e.g. a sweep summary) may append
their own sections through ``extra_sections``.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from zhlora import __version__
from zhlora.analysis import charts, labels, sections, trajectories
from zhlora.analysis.fonts import resolve_chart_language
from zhlora.analysis.generations import read_samples, samples_section
from zhlora.analysis.sections import Section
from zhlora.errors import DataError
from zhlora.filenames import REPORT_HTML, REPORT_MD, RUN_MANIFEST, WEIGHT_CHANGE, WEIGHT_CHANGE_CHART
from zhlora.forgetting_budget import analysis_budget
from zhlora.io_utils import atomic_write_text, read_jsonl, utc_now

logger = logging.getLogger(__name__)

SIDE_BENCHMARKS = {"zh": ("ceval", "cmmlu"), "en": ("mmlu", "gsm8k")}


def _radar_inputs(forgetting: dict, side: str, language: str) -> tuple[list[str], list[float], list[float]]:
    """Spokes of one language's radar: the categories of its multiple-choice benchmarks, and
    the benchmark itself when it has no categories (GSM8K)."""
    names, base, tuned = [], [], []
    for benchmark in SIDE_BENCHMARKS[side]:
        rows = [r for r in forgetting["rows"] if r["benchmark"] == benchmark]
        categories = [r for r in rows if r["level"] == "category"]
        for row in categories or [r for r in rows if r["level"] == "benchmark"]:
            prefix = labels.benchmark_label(benchmark)
            names.append(
                prefix if row["level"] == "benchmark" else f"{prefix}: {labels.category_label(row['name'], language)}"
            )
            base.append(row["base_pct"])
            tuned.append(row["tuned_pct"])
    return names, base, tuned


def comparison_charts(
    forgetting: dict, out_dir: str | os.PathLike, *, language: str = "auto"
) -> list[tuple[str, Path]]:
    """Draw the comparison charts into ``out_dir``; return ``(caption, path)`` pairs.

    A radar per language (Chinese: C-Eval and CMMLU categories; English: MMLU categories and
    GSM8K), base vs tuned, and the change of every benchmark and category with its CI.
    """
    out_dir = Path(out_dir)
    lang, _ = resolve_chart_language(language)
    base_name, tuned_name = labels.text("base", lang), labels.text("tuned", lang)
    colors = {base_name: charts.BASE_COLOR, tuned_name: charts.TUNED_COLOR}
    drawn: list[tuple[str, Path]] = []
    for side, title_key in (("zh", "chinese_radar"), ("en", "english_radar")):
        names, base, tuned = _radar_inputs(forgetting, side, lang)
        if len(names) >= 3:
            path = charts.plot_radar(
                names,
                {base_name: base, tuned_name: tuned},
                out_dir / f"report_radar_{side}.png",
                title=labels.text(title_key, lang),
                colors=colors,
                language=lang,
            )
            drawn.append((labels.text(title_key, "en"), path))
    rows = [r for r in forgetting["rows"] if r["level"] in ("benchmark", "category")]
    if rows:
        bars = [
            {
                "label": labels.benchmark_label(r["benchmark"])
                if r["level"] == "benchmark"
                else f"{labels.benchmark_label(r['benchmark'])}: {labels.category_label(r['name'], lang)}",
                "delta": r["delta_points"],
                "ci_low": r["ci_low_points"],
                "ci_high": r["ci_high_points"],
                "verdict": r["verdict"],
            }
            for r in rows
        ]
        confidence = forgetting["statistics"]["confidence"]
        path = charts.plot_change_bars(
            bars,
            out_dir / "report_change.png",
            title=labels.text("change_title", lang, confidence=confidence),
            axis_label=labels.text("change_axis", lang),
            language=lang,
        )
        drawn.append((labels.text("change_title", "en", confidence=confidence), path))
    return drawn


def training_charts(
    training_log: str | os.PathLike, out_dir: str | os.PathLike, *, language: str = "auto", forgetting: dict | None = None
) -> list[tuple[str, Path]]:
    """Loss curve (and, when the log has probe rows, the probe curves and the learning–forgetting
    trajectory, with ``forgetting``'s final evaluation and budget) of a training log."""
    training_log, out_dir = Path(training_log), Path(out_dir)
    if not training_log.is_file():
        raise DataError(f"Training log {training_log} does not exist; pass the training_log.jsonl of the LoRA run.")
    rows = read_jsonl(training_log)
    drawn = []
    if any(row.get("loss") is not None for row in rows):
        drawn.append(
            ("Training loss", charts.plot_loss_curve(training_log, out_dir / "report_loss.png", language=language))
        )
    if any(row.get("probes") for row in rows):
        manifest = _run_manifest(training_log.parent)
        marks = charts.probe_chart_marks(manifest.get("monitoring"))
        drawn.append(
            (
                "Probes during training",
                charts.plot_probe_curves(training_log, out_dir / "report_probes.png", language=language, **marks),
            )
        )
        series = trajectories.run_series(training_log.parent.name, training_log, forgetting,
                                         manifest.get("finetuning_type", "lora"))
        if series["points"]:
            budget = analysis_budget((forgetting or {}).get("budget", {}).get("text"))
            drawn.append((
                "Learning vs forgetting at each monitored step (bits per byte, % change from step 0; star: final evaluation)",
                charts.plot_learning_forgetting([series], out_dir / "report_trajectory.png", language=language,
                                                budget_pct=trajectories.budget_line_pct(budget, trajectories.start_en_ppl(training_log))),
            ))
    return drawn


def _run_manifest(run_dir: Path) -> dict:
    """The training run's ``manifest.json`` beside its training log, or {} when absent or unreadable."""
    try:
        manifest = json.loads((run_dir / RUN_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _css() -> str:
    return resources.files("zhlora.analysis").joinpath("assets/report.css").read_text(encoding="utf-8")


def render_html(title: str, report_sections: Sequence[Section]) -> str:
    """A complete, self-contained HTML page of ``report_sections``."""
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in report_sections if s.anchor)
    body = "\n".join(s.html for s in report_sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_css()}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">Generated {html.escape(utc_now())} by zhlora {html.escape(__version__)}.</p>\n'
        f"<nav>{nav}</nav>\n{body}\n</main>\n</body>\n</html>\n"
    )


def render_markdown(title: str, report_sections: Sequence[Section]) -> str:
    """The Markdown twin of :func:`render_html` (charts as relative image links)."""
    return f"# {title}\n\nGenerated {utc_now()} by zhlora {__version__}.\n\n" + "\n".join(
        s.markdown for s in report_sections
    )


def write_report(
    out_dir: str | os.PathLike,
    forgetting: dict,
    *,
    base_dir: str | os.PathLike,
    tuned_dir: str | os.PathLike,
    training_log: str | os.PathLike | None = None,
    extra_sections: Sequence[Section] | None = None,
    language: str = "auto",
) -> Path:
    """Write ``report.html`` and ``report.md`` (plus their ``report_*.png`` charts) to ``out_dir``.

    ``forgetting`` is the dict of :func:`zhlora.analysis.compare.compare_results`; ``base_dir``
    and ``tuned_dir`` are shown as the compared folders, and their ``samples.json`` (when both
    have one) give the side-by-side sample generations; ``training_log`` adds the loss curve.
    The report is a view of forgetting.json, so rerunning replaces it. Returns the HTML path.
    """
    out_dir = Path(out_dir)
    forgetting = {
        **forgetting,
        "base": {**forgetting["base"], "dir": str(base_dir)},
        "tuned": {**forgetting["tuned"], "dir": str(tuned_dir)},
    }
    chart_list = comparison_charts(forgetting, out_dir, language=language)
    parts = [*([sections.verdicts_section(forgetting)] if "hypotheses" in forgetting else []),
             sections.headline_section(forgetting)]
    samples = samples_section(read_samples(base_dir), read_samples(tuned_dir))
    if samples is not None:
        parts.append(samples)
    if chart_list:
        parts.append(sections.charts_section("Charts", chart_list, out_dir))
    parts += [sections.benchmarks_section(forgetting), sections.perplexity_section(forgetting)]
    if training_log is not None:
        training = training_charts(training_log, out_dir, language=language, forgetting=forgetting)
        if training:
            parts.append(sections.charts_section("Training", training, out_dir, anchor="training"))
        spectrum = Path(training_log).parent / WEIGHT_CHANGE
        if spectrum.is_file():
            parts.append(sections.weight_change_section(json.loads(spectrum.read_text(encoding="utf-8")),
                                                        Path(training_log).parent / WEIGHT_CHANGE_CHART, out_dir))
    parts += [
        sections.breakdown_section(forgetting, "category"),
        sections.breakdown_section(forgetting, "subject"),
        sections.flipped_section(forgetting),
        sections.settings_section(forgetting),
        *(extra_sections or []),
    ]
    title = "zhlora forgetting report"
    atomic_write_text(out_dir / REPORT_MD, render_markdown(title, parts))
    return atomic_write_text(out_dir / REPORT_HTML, render_html(title, parts))
