"""The files of ``evaluation_results/<name>/``: results.json, predictions, results.md, timings.json.

``results.json`` (schema in docs/architecture.md) is deterministic: it holds no wall-clock
time, so an evaluation resumed after a kill ends with a byte-identical file. Wall-clock
timings and the creation time go to ``timings.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from zhlora.evaluation.runner import BenchmarkResult
from zhlora.filenames import PREDICTIONS_DIRNAME, RESULTS_FILE, RESULTS_MD, SAMPLES_NAME, TIMINGS_FILE
from zhlora.io_utils import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    provenance,
    utc_now,
)

SCHEMA_VERSION = 1
RESULT_FILES = (RESULTS_FILE, RESULTS_MD, TIMINGS_FILE, SAMPLES_NAME)
INDEPENDENT_LABELS = {"bits_per_byte": "bits/byte", "bits_per_character": "bits/character",
                      "word_perplexity": "word perplexity"}
SIZE_LABELS = {"limit": "items per subject", "gsm8k_limit": "GSM8K problems", "ppl_zh_documents": "ppl_zh documents",
               "ppl_en_documents": "ppl_en documents"}


def build_results(model: Mapping, settings: Mapping, benchmarks: Mapping[str, BenchmarkResult]) -> dict:
    """The ``results.json`` object: identity of model and settings, and every benchmark's scores."""
    origin = provenance()
    origin.pop("created_at")  # in timings.json: results.json must not change when nothing else did
    return {
        "schema_version": SCHEMA_VERSION,
        "provenance": origin,
        "model": dict(model),
        "settings": dict(settings),
        "benchmarks": {
            name: {**result.summary, "predictions_file": f"{PREDICTIONS_DIRNAME}/{name}.jsonl"}
            for name, result in benchmarks.items()
        },
    }


def build_timings(benchmarks: Mapping[str, BenchmarkResult], total_seconds: float) -> dict:
    """Wall-clock seconds of this process (units restored from the resume cache cost ~0 s).

    Multiple-choice benchmarks also say how many of the items computed here were scored from
    their subject's shared few-shot prefix (``shared_prefix``: items, shared_items, rate,
    mean_shared_tokens).
    """
    entries = {}
    for name, result in benchmarks.items():
        entries[name] = {"seconds": round(result.seconds, 3), "items": len(result.predictions),
                         "items_per_second": round(len(result.predictions) / result.seconds, 3) if result.seconds > 0 else None}
        if result.prefix is not None and result.prefix.items:
            entries[name]["shared_prefix"] = result.prefix.as_dict()
    return {"created_at": utc_now(), "total_seconds": round(total_seconds, 3), "benchmarks": entries}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def results_markdown(results: Mapping) -> str:
    """A Markdown summary of one ``results.json``: headline table, categories, subjects."""
    model = results["model"]
    lines = ["# Evaluation results", ""]
    lines.append(f"- base model: `{model['base_path']}` (sha256 `{(model.get('base_sha256') or 'n/a')[:12]}`)")
    if model.get("adapter_path"):
        lines.append(f"- LoRA adapter: `{model['adapter_path']}` (sha256 `{model['adapter_sha256'][:12]}`), "
                     f"scale {model['adapter_scale']:g}")
        check = model.get("adapter_check") or {}
        lines.append(f"- adapter check: {'ok' if check.get('ok') else '**FAILED**'} — {check.get('message', '')}")
    settings = results["settings"]
    sizes = [f"{label} {settings[key]}" for key, label in SIZE_LABELS.items() if settings.get(key)]
    lines.append(f"- protocol {settings.get('protocol')}, " + (f"limited: {', '.join(sizes)}" if sizes else "all items"))
    lines += ["", "| benchmark | kind | shots | n | accuracy (micro) | accuracy (macro) | loss (nats/token) | perplexity (per token; tokenizer-independent) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, entry in results["benchmarks"].items():
        if entry["kind"] == "perplexity":
            independent = "".join(f"; {label} {entry[key]:.4f}" for key, label in INDEPENDENT_LABELS.items()
                                  if entry.get(key) is not None)
            lines.append(f"| {name} | perplexity | – | {entry['n_documents']} docs, {entry['n_tokens']} tokens | – | – | "
                         f"{entry['loss']:.4f} | {entry['perplexity']:.3f}{independent} |")
        else:
            macro = _pct(entry["accuracy_macro"]) if "accuracy_macro" in entry else "–"
            extra = f" (flexible {_pct(entry['exact_match_flexible'])})" if entry["kind"] == "generate" else ""
            lines.append(f"| {name} | {entry.get('variant', entry['protocol'])} | {entry['shots']} | {entry['n']} | "
                         f"{_pct(entry['accuracy_micro'])}{extra} | {macro} | – | – |")
    for name, entry in results["benchmarks"].items():
        if entry["kind"] != "multiple_choice":
            continue
        lines += ["", f"## {name}: categories", "", "| category | n | micro | macro |", "|---|---|---|---|"]
        for category, scores in entry["categories"].items():
            lines.append(f"| {category} | {scores['n']} | {_pct(scores['accuracy_micro'])} | {_pct(scores['accuracy_macro'])} |")
        lines += ["", "<details><summary>subjects</summary>", "", "| subject | 中文 | n | accuracy |", "|---|---|---|---|"]
        for subject, scores in entry["subjects"].items():
            lines.append(f"| {subject} | {scores.get('name_zh') or ''} | {scores['n']} | {_pct(scores['accuracy'])} |")
        lines += ["", "</details>"]
    lines.append("")
    return "\n".join(lines)


def write_result_files(results_dir: Path, results: Mapping, benchmarks: Mapping[str, BenchmarkResult],
                       timings: Mapping) -> list[Path]:
    """Write predictions, ``results.md`` and ``timings.json`` atomically; return the paths.

    ``results.json`` is not among them: :func:`mark_results_complete` writes it after every other
    file of the folder, so a folder with a results.json is complete (a full disk or a kill before
    it leaves a folder that says it is unfinished, and the rerun resumes from the cache).
    """
    results_dir = Path(results_dir)
    written = []
    for name, result in benchmarks.items():
        path = results_dir / PREDICTIONS_DIRNAME / f"{name}.jsonl"
        atomic_write_jsonl(path, result.predictions)
        written.append(path)
    written.append(atomic_write_text(results_dir / RESULTS_MD, results_markdown(results)))
    written.append(atomic_write_json(results_dir / TIMINGS_FILE, timings))
    return written


def mark_results_complete(results_dir: Path, results: Mapping) -> Path:
    """Write ``results.json``, the folder's last file and its completion marker."""
    return atomic_write_json(Path(results_dir) / RESULTS_FILE, results)
