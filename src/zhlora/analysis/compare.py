"""Forgetting analysis: pair a base and a tuned evaluation item by item and test every change.

:func:`build_forgetting` is the pure computation (results + predictions in, forgetting dict
out); :func:`compare_results` reads the two folders and writes ``forgetting.json`` and
``forgetting.md``. Pairing and refusal live in :mod:`~zhlora.analysis.pairing`, the numerics
in :mod:`~zhlora.analysis.stats`, the summary sentence in :mod:`~zhlora.analysis.headline`.
The output schema is in docs/architecture.md, the method in docs/analysis.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zhlora.analysis import stats
from zhlora.analysis.headline import headline
from zhlora.analysis.pairing import (
    BENCHMARK_FIELDS_THAT_MUST_MATCH,
    PairedItems,
    SettingsMismatchError,
    check_comparable,
    pair_predictions,
)
from zhlora.analysis.results_io import (
    ACCURACY_KINDS,
    FORGETTING_SCHEMA_VERSION,
    evaluated_at,
    load_document_losses,
    load_predictions,
    load_question_texts,
    load_results,
    results_dir_of,
)
from zhlora.analysis.verdicts import hypotheses
from zhlora.config import PAIRED_SETTINGS
from zhlora.data.benchmarks import language_of, reading_order
from zhlora.data.benchmarks.kinds import PERPLEXITY_UNITS
from zhlora.errors import ConfigError, DataError, ZhloraError
from zhlora.filenames import FORGETTING_FILE, FORGETTING_MD, RESULTS_FILE
from zhlora.forgetting_budget import DEFAULT_FORGETTING_BUDGET, analysis_budget
from zhlora.io_utils import atomic_write_json, atomic_write_text, provenance

if TYPE_CHECKING:
    from zhlora.config import ReportConfig

logger = logging.getLogger(__name__)

POWER, POWER_SIGNIFICANCE = 0.80, 0.05  # the detectable change: 80% power, two-sided alpha 0.05


def entry_language(name: str, entry: dict) -> str:
    """A benchmark's language as its ``results.json`` entry records it; for files written before
    entries carried one, the registry's (:mod:`zhlora.data.benchmarks`); ``other`` when neither knows."""
    return entry.get("language") or language_of(name) or "other"


def ordered_benchmarks(entries: dict) -> list[str]:
    """The benchmarks of a ``results.json`` (name -> entry) in reading order: Chinese, then English, then others."""
    return reading_order({name: entry_language(name, entry) for name, entry in entries.items()})


def accuracy_row(
    *,
    benchmark: str,
    language: str,
    level: str,
    name: str,
    family: str,
    base_correct: np.ndarray,
    tuned_correct: np.ndarray,
    confidence: float,
    **_: object,
) -> dict:
    """One comparison row (scores in percent, change in points) before the Holm correction.

    The interval is Tango's score interval for paired proportions; ``detectable_points`` is the
    smallest change a McNemar test on these items detects with 80% power at α = 0.05
    (two-sided), assuming the share of flipped items observed here (docs/analysis.md §3-4).
    """
    counts = stats.paired_counts(base_correct, tuned_correct)
    base_pct = 100.0 * (counts.a + counts.b) / counts.n
    tuned_pct = 100.0 * (counts.a + counts.c) / counts.n
    ci_low, ci_high = stats.paired_difference_interval(counts, confidence)
    return {
        "benchmark": benchmark,
        "level": level,
        "name": name,
        "family": family,
        "language": language,
        "n": counts.n,
        "base_pct": base_pct,
        "tuned_pct": tuned_pct,
        "delta_points": counts.delta_points,
        "relative_change": (tuned_pct - base_pct) / base_pct if base_pct else None,
        "retention": tuned_pct / base_pct if base_pct else None,
        "ci_low_points": ci_low,
        "ci_high_points": ci_high,
        "detectable_points": stats.minimum_detectable_change(
            counts.n, (counts.b + counts.c) / counts.n, POWER_SIGNIFICANCE, POWER
        ),
        "right_to_wrong": counts.b,
        "wrong_to_right": counts.c,
        "p_value": stats.mcnemar_exact(counts.b, counts.c),
    }


def apply_holm(rows: list[dict], significance: float) -> None:
    """Add ``p_holm`` and ``verdict`` to each row, correcting within each row's family."""
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    for members in families.values():
        for row, adjusted in zip(members, stats.holm_adjust([r["p_value"] for r in members]), strict=True):
            row["p_holm"] = adjusted
            row["verdict"] = stats.verdict(row["delta_points"], adjusted, significance)


def benchmark_rows(name: str, base_entry: dict, tuned_entry: dict, paired: PairedItems, **options) -> list[dict]:
    """The benchmark row, then its category rows and subject rows (multiple choice only)."""
    base_correct, tuned_correct = paired.base_correct, paired.tuned_correct
    options = {**options, "language": entry_language(name, base_entry)}
    top = accuracy_row(
        benchmark=name,
        level="benchmark",
        name=name,
        family="benchmarks",
        base_correct=base_correct,
        tuned_correct=tuned_correct,
        **options,
    )
    if "accuracy_macro" in base_entry and "accuracy_macro" in tuned_entry:
        top["base_macro_pct"] = 100.0 * base_entry["accuracy_macro"]
        top["tuned_macro_pct"] = 100.0 * tuned_entry["accuracy_macro"]
    rows = [top]
    subjects_info = base_entry.get("subjects") or {}
    if not subjects_info:
        return rows
    item_subjects = np.array([row.get("subject") for row in paired.base_rows], dtype=object)
    unknown = sorted({str(s) for s in item_subjects if s not in subjects_info})
    if unknown:
        raise DataError(
            f'Predictions of "{name}" name subjects missing from results.json: {", ".join(unknown[:5])}. '
            "Rerun `zhlora evaluate`."
        )
    categories: dict[str, list[str]] = {}
    for subject, info in subjects_info.items():
        for category in info.get("categories") or []:
            categories.setdefault(category, []).append(subject)
    for category, members in categories.items():
        mask = np.isin(item_subjects, members)
        rows.append(
            accuracy_row(
                benchmark=name,
                level="category",
                name=category,
                family=f"{name}:categories",
                base_correct=base_correct[mask],
                tuned_correct=tuned_correct[mask],
                **options,
            )
        )
    for subject, info in subjects_info.items():
        mask = item_subjects == subject
        if not mask.any():
            continue
        row = accuracy_row(
            benchmark=name,
            level="subject",
            name=subject,
            family=f"{name}:subjects",
            base_correct=base_correct[mask],
            tuned_correct=tuned_correct[mask],
            **options,
        )
        row["name_zh"] = info.get("name_zh")
        rows.append(row)
    return rows


def perplexity_row(
    name: str,
    base_entry: dict,
    tuned_entry: dict,
    base_documents: Sequence[dict] | None = None,
    tuned_documents: Sequence[dict] | None = None,
    *,
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> dict:
    """Perplexity before and after (relative change = tuned / base − 1), per token and per
    tokenizer-independent unit (bits per byte, bits per character, word perplexity).

    With per-document losses of both models (``{id, nll, n_tokens, n_bytes, ...}`` rows) and
    at least :data:`~zhlora.analysis.stats.MIN_DOCUMENTS` documents, every change gets a bootstrap CI over documents;
    with fewer documents ``resolved`` is false and the CIs are null; without losses they are null.
    """
    row = {
        "benchmark": name,
        "language": entry_language(name, base_entry),
        "n_documents": base_entry["n_documents"],
        "n_tokens": base_entry["n_tokens"],
        "base_loss": base_entry["loss"],
        "tuned_loss": tuned_entry["loss"],
        "delta_loss": tuned_entry["loss"] - base_entry["loss"],
        "base_perplexity": base_entry["perplexity"],
        "tuned_perplexity": tuned_entry["perplexity"],
        "relative_change": tuned_entry["perplexity"] / base_entry["perplexity"] - 1.0,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "resolved": base_entry["n_documents"] >= stats.MIN_DOCUMENTS,
        "units": {},
    }
    for count_field, field, form in PERPLEXITY_UNITS.values():
        if base_entry.get(field) is not None and tuned_entry.get(field) is not None:
            row["units"][field] = {
                "count": base_entry[count_field], "base": base_entry[field], "tuned": tuned_entry[field],
                "delta": tuned_entry[field] - base_entry[field],
                "relative_change": tuned_entry[field] / base_entry[field] - 1.0,
                "ci_low": None, "ci_high": None, **({"delta_ci_low": None, "delta_ci_high": None} if form == "bits" else {}),
            }
    if base_documents is None or tuned_documents is None:
        return row
    paired = pair_predictions(name, base_documents, tuned_documents)
    if any(b["n_tokens"] != t["n_tokens"] for b, t in zip(paired.base_rows, paired.tuned_rows, strict=True)):
        raise SettingsMismatchError(
            f'The two evaluations of "{name}" scored different token counts for the same documents '
            "(a different tokenizer or window). Re-evaluate both with the same base model and settings."
        )
    if not row["resolved"]:
        return row
    columns = {"base": [r["nll"] for r in paired.base_rows], "tuned": [r["nll"] for r in paired.tuned_rows],
               "n_tokens": [r["n_tokens"] for r in paired.base_rows]}
    for count_field, _, _ in PERPLEXITY_UNITS.values():
        if all(count_field in r for r in paired.base_rows):
            columns[count_field] = [r[count_field] for r in paired.base_rows]
    totals = stats.bootstrap_document_totals(columns, bootstrap_samples, stats.stable_rng(seed, f"{name}/perplexity"))
    difference = totals["tuned"] - totals["base"]
    row["ci_low"], row["ci_high"] = stats.percentile_interval(np.expm1(difference / totals["n_tokens"]), confidence)
    row["p_value"] = stats.bootstrap_p_value(difference)
    for count_field, field, form in PERPLEXITY_UNITS.values():
        entry = row["units"].get(field)
        if entry is None or count_field not in totals:
            continue
        if form == "bits":  # the unit cancels in the ratio: the relative change is that of the summed loss
            relative = totals["tuned"] / totals["base"] - 1.0
            entry["delta_ci_low"], entry["delta_ci_high"] = stats.percentile_interval(
                difference / totals[count_field] / np.log(2), confidence
            )
        else:
            relative = np.expm1(difference / totals[count_field])
        entry["ci_low"], entry["ci_high"] = stats.percentile_interval(relative, confidence)
    return row


def flipped_items(paired: PairedItems, questions: dict[str, dict]) -> dict[str, list[dict]]:
    """Items that went right->wrong and wrong->right, with question text where known."""
    flips: dict[str, list[dict]] = {"right_to_wrong": [], "wrong_to_right": []}
    for base, tuned in zip(paired.base_rows, paired.tuned_rows, strict=True):
        if base["correct"] == tuned["correct"]:
            continue
        item = {
            "id": base["id"],
            "gold": base.get("gold"),
            "base_predicted": base.get("predicted"),
            "tuned_predicted": tuned.get("predicted"),
        }
        if base.get("subject") is not None:
            item["subject"] = base["subject"]
        text = base.get("question") or tuned.get("question")
        if text is None and base["id"] in questions:
            text = questions[base["id"]].get("question")
            if questions[base["id"]].get("choices"):
                item["choices"] = questions[base["id"]]["choices"]
        item["question"] = text
        if "generated" in base or "generated" in tuned:
            item["base_generated"] = base.get("generated")
            item["tuned_generated"] = tuned.get("generated")
        flips["right_to_wrong" if base["correct"] else "wrong_to_right"].append(item)
    return flips


def build_forgetting(
    base: dict,
    tuned: dict,
    base_predictions: dict[str, list[dict]],
    tuned_predictions: dict[str, list[dict]],
    *,
    bootstrap_samples: int,
    confidence: float,
    significance: float,
    seed: int,
    questions: dict[str, dict[str, dict]] | None = None,
    budget: str | None = None,
) -> dict:
    """The forgetting analysis of two checked results objects and their prediction rows.

    ``budget`` is ``--forgetting_budget`` (None: the documented default), the margin of the
    English non-inferiority verdicts behind H2.

    ``*_predictions`` map each accuracy benchmark to its prediction rows (and each perplexity
    probe to its per-document losses, when saved); ``questions`` maps a benchmark to
    ``{item id: {question, choices}}`` for showing flipped items (optional).
    """
    check_comparable(base, tuned, "the base results", "the tuned results")
    options = {"bootstrap_samples": bootstrap_samples, "confidence": confidence, "seed": seed}
    rows: list[dict] = []
    perplexity: dict[str, dict] = {}
    flipped: dict[str, dict] = {}
    for name in ordered_benchmarks(base["benchmarks"]):
        base_entry, tuned_entry = base["benchmarks"][name], tuned["benchmarks"][name]
        if base_entry["kind"] == "perplexity":
            perplexity[name] = perplexity_row(
                name, base_entry, tuned_entry, base_predictions.get(name), tuned_predictions.get(name), **options
            )
            continue
        paired = pair_predictions(name, base_predictions[name], tuned_predictions[name])
        rows += benchmark_rows(name, base_entry, tuned_entry, paired, **options)
        flipped[name] = flipped_items(paired, (questions or {}).get(name, {}))
    apply_holm(rows, significance)
    parsed_budget = analysis_budget(budget)
    answers = hypotheses(rows, list(perplexity.values()), parsed_budget, confidence=confidence, significance=significance)
    return {
        "schema_version": FORGETTING_SCHEMA_VERSION,
        "provenance": provenance(),
        "base": {"model": base["model"]},
        "tuned": {"model": tuned["model"]},
        "settings": {
            **{key: base["settings"].get(key) for key in PAIRED_SETTINGS},
            "benchmarks": {
                name: {key: entry[key] for key in BENCHMARK_FIELDS_THAT_MUST_MATCH if key in entry}
                for name, entry in sorted(base["benchmarks"].items())
            },
        },
        "statistics": {
            "bootstrap_samples": bootstrap_samples,
            "confidence": confidence,
            "significance": significance,
            "seed": seed,
            "interval": "Tango score interval for paired proportions (accuracy); percentile bootstrap over "
            f"documents (perplexity, at least {stats.MIN_DOCUMENTS} documents)",
            "side_interval": "MOVER (Zou & Donner 2008) over the side's benchmark intervals",
            "power": f"smallest change detected with {POWER:.0%} power by a two-sided McNemar test at alpha "
            f"{POWER_SIGNIFICANCE}, assuming the observed share of flipped items (at least the change itself)",
            "test": "McNemar exact, two-sided",
            "correction": "Holm within each family (benchmarks; <benchmark>:categories; <benchmark>:subjects); "
            "H1: Holm over the Chinese rows (accuracy: McNemar; loss: bootstrap); H2: intersection-union over the "
            "English rows' non-inferiority tests against the budget",
            "noninferiority": "accuracy: Tango score test at -margin (one-sided, alpha (1-confidence)/2), i.e. the "
            "interval's lower end above -margin; loss: the bootstrap interval's upper end below the margin",
        },
        "budget": {"text": parsed_budget.text, "given": budget is not None and bool(budget.strip()),
                   "default": DEFAULT_FORGETTING_BUDGET},
        "hypotheses": answers,
        "headline": headline(
            {row["benchmark"]: row for row in rows if row["level"] == "benchmark"}, perplexity, confidence=confidence
        ),
        "rows": rows,
        "perplexity": list(perplexity.values()),
        "flipped": flipped,
    }


def compare_results(
    base_dir: str | os.PathLike,
    tuned_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    bootstrap_samples: int,
    confidence: float,
    significance: float,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    budget: str | None = None,
    write: bool = True,
) -> dict:
    """Compare two ``evaluate`` folders; write ``forgetting.json`` and ``forgetting.md`` to ``out_dir`` (unless not ``write``).

    ``data_dir`` (the normalized data folder) supplies question text for flipped items when
    the predictions do not carry it. An existing forgetting.json is only replaced with
    ``overwrite=True``. Returns the forgetting dict.
    """
    base_dir, tuned_dir, out_dir = results_dir_of(base_dir), results_dir_of(tuned_dir), Path(out_dir)
    if base_dir.resolve() == tuned_dir.resolve():
        raise ConfigError(f"BASE and TUNED are the same folder ({base_dir}); pass the baseline and the tuned results.")
    if (out_dir / FORGETTING_FILE).exists() and not overwrite:
        raise ZhloraError(
            f"{out_dir / FORGETTING_FILE} already exists. "
            "Pass --overwrite to replace it, or --output_dir for another folder."
        )
    base, tuned = load_results(base_dir), load_results(tuned_dir)
    check_comparable(base, tuned, str(base_dir / RESULTS_FILE), str(tuned_dir / RESULTS_FILE))
    if base["model"].get("adapter_path") and not tuned["model"].get("adapter_path"):
        logger.warning(
            "BASE (%s) has an adapter and TUNED (%s) has none: are the two folders swapped?", base_dir, tuned_dir
        )
    accuracy = [name for name, entry in base["benchmarks"].items() if entry["kind"] in ACCURACY_KINDS]
    base_predictions = {name: load_predictions(base_dir, name, base["benchmarks"][name]) for name in accuracy}
    tuned_predictions = {name: load_predictions(tuned_dir, name, tuned["benchmarks"][name]) for name in accuracy}
    for name, entry in base["benchmarks"].items():
        if entry["kind"] == "perplexity":
            base_docs = load_document_losses(base_dir, name, entry)
            tuned_docs = load_document_losses(tuned_dir, name, tuned["benchmarks"][name])
            if base_docs is not None and tuned_docs is not None:
                base_predictions[name], tuned_predictions[name] = base_docs, tuned_docs
    questions = None
    if data_dir is not None:
        questions = {
            name: load_question_texts(
                data_dir,
                name,
                base["benchmarks"][name].get("split", "test"),
                _flipped_ids(base_predictions[name], tuned_predictions[name]),
            )
            for name in accuracy
        }
    forgetting = build_forgetting(
        base,
        tuned,
        base_predictions,
        tuned_predictions,
        bootstrap_samples=bootstrap_samples,
        confidence=confidence,
        significance=significance,
        seed=seed,
        questions=questions,
        budget=budget,
    )
    for side, folder in (("base", base_dir), ("tuned", tuned_dir)):
        forgetting[side].update(dir=str(folder), created_at=evaluated_at(folder))
    if write:
        write_forgetting(out_dir, forgetting)
    return forgetting


def write_forgetting(out_dir: Path, forgetting: dict) -> Path:
    """Write ``forgetting.md``, then ``forgetting.json``: the JSON is the comparison's last file and its completion
    marker, so a full disk or a kill before it leaves no forgetting.json that a rerun would refuse to replace."""
    from zhlora.analysis.sections import forgetting_markdown

    atomic_write_text(Path(out_dir) / FORGETTING_MD, forgetting_markdown(forgetting))
    return atomic_write_json(Path(out_dir) / FORGETTING_FILE, forgetting)


def compare_and_report(
    base_dir: str | os.PathLike,
    tuned_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    report: ReportConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    training_log: str | os.PathLike | None = None,
    write_html: bool = True,
    budget: str | None = None,
) -> tuple[dict, Path | None]:
    """:func:`compare_results` with the statistics of ``report``, then (unless ``write_html`` is
    False) :func:`zhlora.analysis.report.write_report`: what ``zhlora compare`` and ``zhlora evaluate``
    with a baseline both do. Returns the forgetting dict and the report.html path (None without it).
    """
    from zhlora.analysis.report import write_report

    forgetting = compare_results(
        base_dir, tuned_dir, out_dir, bootstrap_samples=report.bootstrap_samples, confidence=report.confidence,
        significance=report.significance, seed=report.stats_seed, data_dir=data_dir, overwrite=overwrite, budget=budget,
        write=False,
    )
    html = write_report(out_dir, forgetting, base_dir=base_dir, tuned_dir=tuned_dir, training_log=training_log,
                        language=report.chart_language) if write_html else None
    write_forgetting(out_dir, forgetting)  # last: its presence says the comparison is complete
    return forgetting, html


def _flipped_ids(base_rows: list[dict], tuned_rows: list[dict]) -> set:
    tuned_correct = {row["id"]: row["correct"] for row in tuned_rows}
    return {
        row["id"]
        for row in base_rows
        if tuned_correct.get(row["id"]) is not None and row["correct"] != tuned_correct[row["id"]]
    }
