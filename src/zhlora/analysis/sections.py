"""Report sections: each turns part of a forgetting analysis into Markdown and HTML.

A report is a list of :class:`Section`; ``forgetting.md``, ``report.md`` and ``report.html``
are different selections and renderings of the same sections. New content (a sweep table, a
trade-off chart) is added by writing one more function that returns a Section.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.analysis.labels import benchmark_label
from zhlora.analysis.stats import MIN_DOCUMENTS
from zhlora.analysis.verdicts import row_verdict, verdict_lines

FLIPPED_SHOWN = 10  # per benchmark and direction; forgetting.json has them all
VERDICT_MARK = {"improved": "▲ improved", "forgot": "▼ forgot", "no significant change": "– no significant change"}


@dataclass
class Table:
    """A table with plain-text cells; ``row_classes`` style whole HTML rows (e.g. by verdict)."""

    headers: Sequence[str]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cell(h) for h in self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = []
        for index, row in enumerate(self.rows):
            css = self.row_classes[index] if index < len(self.row_classes) else ""
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
            body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        return f'<div class="table-wrap">{table}</div>\n'


@dataclass
class Section:
    """One titled part of a report, in both output formats."""

    title: str
    markdown: str
    html: str
    anchor: str = ""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _signed(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:+.1f}{unit}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _row_label(row: dict) -> str:
    if row["level"] == "benchmark":
        return benchmark_label(row["name"])
    if row.get("name_zh"):
        return f"{row['name']} ({row['name_zh']})"
    return row["name"]


def accuracy_table(rows: Sequence[dict], confidence: float) -> Table:
    """Comparison rows as a table: scores (%), change, CI, retention, flips, p-values, verdict."""
    headers = [
        "",
        "n",
        "base %",
        "tuned %",
        "change (points)",
        f"{confidence:.0%} CI",
        "detectable (80% power)",
        "retention",
        "right→wrong / wrong→right",
        "McNemar p",
        "Holm p",
        "verdict",
    ]
    cells, classes = [], []
    for row in rows:
        cells.append(
            [
                _row_label(row),
                str(row["n"]),
                _pct(row["base_pct"]),
                _pct(row["tuned_pct"]),
                _signed(row["delta_points"]),
                f"[{row['ci_low_points']:+.1f}, {row['ci_high_points']:+.1f}]",
                "—" if row.get("detectable_points") is None else f"±{row['detectable_points']:.1f}",
                "—" if row["retention"] is None else f"{row['retention']:.2f}",
                f"{row['right_to_wrong']} / {row['wrong_to_right']}",
                _p(row["p_value"]),
                _p(row["p_holm"]),
                VERDICT_MARK[row["verdict"]] + (f"; H2: {row_verdict(row)}" if row.get("margin_verdict") else ""),
            ]
        )
        classes.append(row["verdict"].replace(" ", "-"))
    return Table(headers, cells, classes)


def table_section(title: str, intro: str, tables: Sequence[tuple[str, Table]], anchor: str) -> Section:
    md = [f"## {title}\n", f"{intro}\n"] if intro else [f"## {title}\n"]
    htm = [f'<h2 id="{anchor}">{html.escape(title)}</h2>']
    if intro:
        htm.append(f"<p>{html.escape(intro)}</p>")
    for caption, table in tables:
        if caption:
            md.append(f"### {caption}\n")
            htm.append(f"<h3>{html.escape(caption)}</h3>")
        md.append(table.markdown())
        htm.append(table.html())
    return Section(title, "\n".join(md), "\n".join(htm), anchor)


def verdicts_section(forgetting: dict) -> Section:
    """The report's first lines: H1 and H2 answered (中文, English), then the rows each rests on."""
    answers = forgetting["hypotheses"]
    lines = verdict_lines(answers)
    rows, classes = [], []
    for key in ("H1", "H2"):
        entry = answers[key]
        rows.append([key, entry["claim"], entry["verdict"], entry["evidence"]])
        classes.append({"supported": "improved", "rejected": "forgot", "contradicted": "forgot"}.get(entry["verdict"], ""))
    table = Table(["", "hypothesis", "verdict", "evidence (what it rests on)"], rows, classes)
    intro = (f"H1 is a superiority question: Holm-corrected tests over the Chinese rows. H2 is a non-inferiority "
             f"question against the forgetting budget ({answers['budget']}"
             f"{'' if forgetting['budget']['given'] else ', the default'}): every English row's interval must lie "
             "within the margin (intersection-union); 'inconclusive' names the items that would decide it.")
    return Section(
        "Verdicts",
        "\n".join(f"**{text}**\n" for text in lines) + "\n" + intro + "\n\n" + table.markdown(),
        '<div class="headline verdicts" id="verdicts">' + "".join(f"<p>{html.escape(t)}</p>" for t in lines)
        + "</div>" + f"<p class=\"meta\">{html.escape(intro)}</p>" + f'<div class="verdict-table">{table.html()}</div>',
        "verdicts",
    )


def headline_section(forgetting: dict) -> Section:
    """The numbers behind the verdicts: each side's change with its uncertainty, one sentence per language."""
    sentences = [forgetting["headline"]["text_zh"], forgetting["headline"]["text"]]
    return Section(
        "Numbers",
        "\n".join(f"{text}\n" for text in sentences),
        '<div class="numbers" id="headline">' + "".join(f"<p>{html.escape(t)}</p>" for t in sentences) + "</div>",
        "headline",
    )


def settings_section(forgetting: dict) -> Section:
    """What was compared and how: models, evaluation settings, statistics."""
    settings, statistics = forgetting["settings"], forgetting["statistics"]
    tuned_model = forgetting["tuned"]["model"]
    rows = [
        ["base results", str(forgetting["base"].get("dir", "—"))],
        ["tuned results", str(forgetting["tuned"].get("dir", "—"))],
        ["base model", str(forgetting["base"]["model"].get("base_path"))],
        [
            "adapter",
            f"{tuned_model.get('adapter_path')} (scale {tuned_model.get('adapter_scale')})",
        ],
    ]
    rows += [
        [f"setting: {key}", "—" if value is None else str(value)]
        for key, value in settings.items()
        if key != "benchmarks"
    ]
    for name, spec in settings["benchmarks"].items():
        described = ", ".join(
            f"{k}={v}" for k, v in spec.items() if k not in ("item_ids_sha256", "data_sha256", "kind")
        )
        rows.append([f"benchmark: {benchmark_label(name)}", described])
    rows += [
        [
            "interval",
            f"{statistics['confidence']:.0%} {statistics['interval']}, "
            f"{statistics['bootstrap_samples']} resamples, seed {statistics['seed']}",
        ],
        ["test", f"{statistics['test']}; {statistics['correction']}; significance {statistics['significance']}"],
    ]
    return table_section("Settings", "", [("", Table(["", "value"], rows))], "settings")


def benchmarks_section(forgetting: dict) -> Section:
    """Benchmark-level accuracy changes (the Holm family the headline rests on)."""
    rows = [row for row in forgetting["rows"] if row["level"] == "benchmark"]
    confidence = forgetting["statistics"]["confidence"]
    intro = (
        "Accuracy in percent (GSM8K: strict match). Change = tuned − base in points, with Tango's score interval "
        "for paired proportions; retention = tuned / base. Detectable: the smallest change a two-sided McNemar test "
        "at α = 0.05 finds with 80% power on these n items, assuming the share of flipped items seen here (at least "
        "the change itself); a smaller true change would usually go unseen. Verdicts use McNemar's exact test, "
        "Holm-corrected across these rows."
    )
    undetectable = forgetting["headline"].get("undetectable") or []
    if undetectable:
        intro += " Too small to detect a change of a few points: " + "; ".join(
            f"{benchmark_label(u['benchmark'])}: n = {u['n']} — changes smaller than ±{u['detectable_points']:.0f} "
            "points would go unseen" for u in undetectable
        ) + "."
    return table_section("Benchmarks", intro, [("", accuracy_table(rows, confidence))], "benchmarks")


def _ppl_interval(row: dict, entry: dict, low: str = "ci_low", high: str = "ci_high", percent: bool = True) -> str:
    """A perplexity change's interval, "not resolved" below the document minimum, "—" without document losses."""
    if row.get("resolved") is False:
        return f"not resolved ({row['n_documents']} documents < {MIN_DOCUMENTS})"
    if entry.get(low) is None:
        return "—"
    if percent:
        return f"[{100 * entry[low]:+.1f}%, {100 * entry[high]:+.1f}%]"
    return f"[{entry[low]:+.4f}, {entry[high]:+.4f}]"


# Perplexity figures per unit: (label, what is counted)
_PPL_UNITS = {
    "bits_per_byte": ("bits per byte", "bytes"),
    "bits_per_character": ("bits per character", "characters"),
    "word_perplexity": ("word perplexity", "words"),
}


def _figure(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.5g}"


def perplexity_section(forgetting: dict) -> Section:
    """Perplexity of the Chinese and English probes before and after, per token and per
    tokenizer-independent unit (bits per byte, bits per character, word perplexity)."""
    confidence = forgetting["statistics"]["confidence"]
    rows = []
    for r in forgetting["perplexity"]:
        label = benchmark_label(r["benchmark"])
        rows.append([
            label, "perplexity per token", f"{r['n_documents']} documents, {r['n_tokens']} tokens",
            f"{r['base_perplexity']:.3f}", f"{r['tuned_perplexity']:.3f}", _signed(100 * r["relative_change"], "%"),
            _ppl_interval(r, r), f"loss {r['base_loss']:.4f} → {r['tuned_loss']:.4f} nats/token",
        ])
        for unit_key, (name, counted) in _PPL_UNITS.items():
            unit = (r.get("units") or {}).get(unit_key)
            if unit is None:
                continue
            difference = "—"
            if "delta" in unit and unit_key != "word_perplexity":
                difference = f"{unit['delta']:+.4f} {_ppl_interval(r, unit, 'delta_ci_low', 'delta_ci_high', False)}"
            rows.append([
                label, name, f"{unit['count']} {counted}", _figure(unit["base"]), _figure(unit["tuned"]),
                _signed(100 * unit["relative_change"], "%"), _ppl_interval(r, unit), difference,
            ])
    headers = ["probe", "measure", "scored", "base", "tuned", "relative change", f"{confidence:.0%} CI", "difference"]
    intro = (
        "Lower is better. Per-token perplexity depends on the tokenizer (a byte-level BPE makes the continuation "
        "bytes of a Chinese character nearly free), so compare languages or models with bits per byte (both probes), "
        "bits per character (Chinese) or word perplexity (English, lm-eval's wikitext convention). Intervals "
        f"resample documents (at least {MIN_DOCUMENTS}, and only when both evaluations saved per-document losses); "
        "perplexity has no significance verdict."
    )
    return table_section("Perplexity", intro, [("", Table(headers, rows))] if rows else [], "perplexity")


def breakdown_section(forgetting: dict, level: str) -> Section:
    """Category or subject rows, one table per benchmark (Holm within each table)."""
    confidence = forgetting["statistics"]["confidence"]
    by_benchmark: dict[str, list[dict]] = {}
    for row in forgetting["rows"]:
        if row["level"] == level:
            by_benchmark.setdefault(row["benchmark"], []).append(row)
    tables = [(benchmark_label(name), accuracy_table(rows, confidence)) for name, rows in by_benchmark.items()]
    title = "Categories" if level == "category" else "Subjects"
    intro = f"Holm correction within each benchmark's {title.lower()}."
    return table_section(title, intro, tables, title.lower())


def _short(text: str | None, limit: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flip_markdown(item: dict) -> str:
    where = f" [{item['subject']}]" if item.get("subject") else ""
    return f"- `{item['id']}`{where} {_flip_answer(item)}: {_flip_question(item)}"


def _flip_html(item: dict) -> str:
    where = f" [{item['subject']}]" if item.get("subject") else ""
    parts = [
        f"<li><code>{html.escape(str(item['id']))}</code>{html.escape(where)} ",
        f'<span class="answer">{html.escape(_flip_answer(item))}</span><br>{html.escape(_flip_question(item))}',
    ]
    if item.get("choices"):
        options = "".join(f"<li>{html.escape(_short(choice, 120))}</li>" for choice in item["choices"])
        parts.append(f'<ol class="choices" type="A">{options}</ol>')
    if item.get("base_generated") is not None or item.get("tuned_generated") is not None:
        base, tuned = _short(item.get("base_generated"), 600), _short(item.get("tuned_generated"), 600)
        parts.append(
            f"<details><summary>generations</summary><p><b>base:</b> {html.escape(base)}</p>"
            f"<p><b>tuned:</b> {html.escape(tuned)}</p></details>"
        )
    return "".join(parts) + "</li>"


def _flip_answer(item: dict) -> str:
    return f"gold {item.get('gold')}, base {item.get('base_predicted')} → tuned {item.get('tuned_predicted')}"


def _flip_question(item: dict) -> str:
    return _short(item.get("question"), 300) or "(question text not available: pass --data_dir)"


def flipped_section(forgetting: dict, shown: int = FLIPPED_SHOWN) -> Section:
    """Examples of items that flipped between the two models, for inspection."""
    intro = f"Up to {shown} per benchmark and direction; forgetting.json lists them all."
    md = ["## Flipped items\n", f"{intro}\n"]
    htm = ['<h2 id="flipped">Flipped items</h2>', f"<p>{intro}</p>"]
    for name, flips in forgetting["flipped"].items():
        for direction, title in (("right_to_wrong", "right → wrong"), ("wrong_to_right", "wrong → right")):
            items = flips[direction]
            heading = f"{benchmark_label(name)}: {title} ({len(items)})"
            md.append(f"### {heading}\n")
            htm.append(f"<h3>{html.escape(heading)}</h3>")
            if not items:
                md.append("None.\n")
                htm.append("<p>None.</p>")
                continue
            md.append("\n".join(_flip_markdown(item) for item in items[:shown]) + "\n")
            htm.append('<ul class="flips">' + "".join(_flip_html(item) for item in items[:shown]) + "</ul>")
    return Section("Flipped items", "\n".join(md), "\n".join(htm), "flipped")


def charts_section(title: str, charts: Sequence[tuple[str, Path]], base_dir: Path, anchor: str = "charts") -> Section:
    """PNG charts: linked by relative path in Markdown, inlined as base64 in HTML (works offline)."""
    md = [f"## {title}\n"]
    htm = [f'<h2 id="{anchor}">{html.escape(title)}</h2>', '<div class="charts">']
    for caption, path in charts:
        relative = Path(path).relative_to(base_dir) if Path(path).is_relative_to(base_dir) else Path(path)
        md.append(f"![{caption}]({relative.as_posix()})\n")
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        htm.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    htm.append("</div>")
    return Section(title, "\n".join(md), "\n".join(htm), anchor)


def forgetting_sections(forgetting: dict) -> list[Section]:
    """The sections of forgetting.md (everything but charts), in reading order."""
    return [
        *([verdicts_section(forgetting)] if "hypotheses" in forgetting else []),
        headline_section(forgetting),
        benchmarks_section(forgetting),
        perplexity_section(forgetting),
        breakdown_section(forgetting, "category"),
        breakdown_section(forgetting, "subject"),
        flipped_section(forgetting),
        settings_section(forgetting),
    ]


def forgetting_markdown(forgetting: dict) -> str:
    """The text of forgetting.md."""
    return "# Forgetting analysis\n\n" + "\n".join(section.markdown for section in forgetting_sections(forgetting))


def weight_change_section(summary: dict, chart: Path | None, base_dir: Path) -> Section:
    """The spectrum of the update ΔW per module type (``weight_change.json`` of the run)."""
    rows = [[kind.removesuffix("_proj"), str(entry["matrices"]), f"{entry['rank90_median']:g}", str(entry["rank90_max"]),
             "—" if entry["relative_norm_mean"] is None else f"{entry['relative_norm_mean']:.2e}"]
            for kind, entry in summary["by_type"].items()]
    limit = f" of at most {summary['lora_rank']} (the LoRA rank)" if summary.get("lora_rank") else ""
    intro = (f"Method {summary['method']}: for each adapted matrix, the fewest singular directions holding "
             f"{summary['energy']:.0%} of ‖ΔW‖²{limit}, and ‖ΔW‖/‖W‖. Median over all {summary['matrices']} matrices: "
             f"{summary['rank90_median']:g}. Biderman et al. (2024) find full fine-tuning's ΔW needs 10-100x the rank "
             "of typical LoRA configurations.")
    table = Table(["module", "matrices", "rank at 90% (median)", "max", "‖ΔW‖/‖W‖ (mean)"], rows)
    charts = charts_section("Weight change", [("Rank and size of the update per module type", chart)], base_dir,
                            anchor="weight-change") if chart is not None and chart.is_file() else None
    md = (charts.markdown if charts else "## Weight change\n") + f"\n{intro}\n\n{table.markdown()}"
    htm = (charts.html if charts else '<h2 id="weight-change">Weight change</h2>') + f"\n<p>{html.escape(intro)}</p>\n{table.html()}"
    return Section("Weight change", md, htm, "weight-change")
