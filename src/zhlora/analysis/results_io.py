"""Read and check ``evaluation_results/<name>/`` folders (results.json + predictions/*.jsonl).

The analysis trusts nothing it has not checked: a missing key, an accuracy outside [0, 1] or
a predictions file that disagrees with results.json is a :class:`DataError` naming the file,
not a traceback or a silently wrong comparison.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from zhlora.errors import DataError
from zhlora.filenames import RESULTS_FILE, RUNS_DIRNAME, TIMINGS_FILE, TRAINING_LOG
from zhlora.io_utils import read_jsonl

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORGETTING_SCHEMA_VERSION = 1
ACCURACY_KINDS = ("multiple_choice", "generate")
KNOWN_KINDS = (*ACCURACY_KINDS, "perplexity")
_REQUIRED_KEYS = {
    "multiple_choice": ("n", "accuracy_micro", "predictions_file", "subjects"),
    "generate": ("n", "accuracy_micro", "predictions_file"),
    "perplexity": ("loss", "perplexity", "n_documents", "n_tokens"),
}


def results_dir_of(path: str | os.PathLike) -> Path:
    """The results folder named by ``path`` (the folder itself or its results.json)."""
    path = Path(path)
    return path.parent if path.name == RESULTS_FILE else path


def regenerate_results_hint(folder: Path) -> str:
    """The command that writes an evaluation folder again."""
    return (f"Evaluate again into it: `zhlora evaluate --model_path MODEL [--lora_model_path ADAPTER] "
            f"--results_dir {folder} --overwrite` (or rerun the `zhlora run` that made it).")


def load_results(path: str | os.PathLike) -> dict:
    """Load and check ``results.json`` of an evaluation folder (schema in docs/architecture.md)."""
    file = results_dir_of(path) / RESULTS_FILE
    if not file.is_file():
        raise DataError(
            f"{file} does not exist. Pass the folder written by `zhlora evaluate` "
            "(evaluation_results/<name>/, holding results.json and predictions/)."
        )
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno}; truncated or damaged). "
                        f"{regenerate_results_hint(file.parent)}") from None
    except UnicodeDecodeError:
        raise DataError(f"{file}: not UTF-8 text (damaged). {regenerate_results_hint(file.parent)}") from None
    if not isinstance(results, dict) or results.get("schema_version") != SCHEMA_VERSION:
        found = results.get("schema_version") if isinstance(results, dict) else None
        raise DataError(
            f"{file}: schema_version is {found!r}, this zhlora reads {SCHEMA_VERSION} (written by another version, "
            f"or damaged). {regenerate_results_hint(file.parent)}"
        )
    for key in ("model", "settings", "benchmarks"):
        if not isinstance(results.get(key), dict):
            raise DataError(f'{file}: the key "{key}" is missing or not an object; the file is damaged or incomplete. '
                            f"{regenerate_results_hint(file.parent)}")
    for name, entry in results["benchmarks"].items():
        _check_benchmark(file, name, entry)
    return results


def evaluated_at(path: str | os.PathLike) -> str | None:
    """When an evaluation folder was written (``timings.json``; results.json stays time-free)."""
    file = results_dir_of(path) / TIMINGS_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("created_at")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _check_benchmark(file: Path, name: str, entry: dict) -> None:
    kind = entry.get("kind")
    if kind not in KNOWN_KINDS:
        raise DataError(f'{file}: benchmark "{name}" has unknown kind {kind!r} (known: {", ".join(KNOWN_KINDS)}).')
    for key in _REQUIRED_KEYS[kind]:
        if key not in entry:
            raise DataError(f'{file}: the key "benchmarks.{name}.{key}" is missing; the file is damaged or incomplete. '
                            f"{regenerate_results_hint(file.parent)}")
    if kind in ACCURACY_KINDS:
        accuracy = entry["accuracy_micro"]
        if not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
            raise DataError(
                f'{file}: benchmark "{name}" has accuracy_micro {accuracy!r}; accuracies are fractions in [0, 1].'
            )


def load_predictions(results_dir: str | os.PathLike, name: str, entry: dict) -> list[dict]:
    """The per-item prediction rows of one benchmark, checked for ids, right/wrong flags and size."""
    results_dir = results_dir_of(results_dir)
    file = results_dir / entry["predictions_file"]
    if not file.is_file():
        raise DataError(
            f'{file} (predictions of "{name}", named in {results_dir / RESULTS_FILE}) does not exist. '
            "The paired statistics need it; rerun `zhlora evaluate` for this folder."
        )
    rows = read_jsonl(file)
    seen: set[str] = set()
    for line, row in enumerate(rows, start=1):
        if not isinstance(row.get("id"), (str, int)) or not isinstance(row.get("correct"), bool):
            raise DataError(f'{file}, row {line}: needs an "id" and a boolean "correct".')
        if row["id"] in seen:
            raise DataError(f"{file}, row {line}: item id {row['id']!r} appears twice.")
        seen.add(row["id"])
    if len(rows) != entry["n"]:
        raise DataError(
            f'{file} has {len(rows)} rows but results.json says "{name}" has n={entry["n"]}. '
            "The folder mixes files of different runs; rerun `zhlora evaluate`."
        )
    accuracy = sum(row["correct"] for row in rows) / len(rows) if rows else 0.0
    if abs(accuracy - entry["accuracy_micro"]) > 1e-6:
        raise DataError(
            f'{file} gives accuracy {accuracy:.6f} but results.json says "{name}" has {entry["accuracy_micro"]:.6f}. '
            "The folder mixes files of different runs; rerun `zhlora evaluate`."
        )
    return rows


def load_question_texts(data_dir: str | os.PathLike, benchmark: str, split: str, ids: set) -> dict[str, dict]:
    """``{id: {question, choices}}`` for ``ids`` from ``data_dir/<benchmark>/<split>.jsonl``.

    Used only to show flipped items with their text; a missing file is a warning (the report
    then shows ids), a missing ``data_dir`` is an error (a wrong --data_dir flag).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data_dir {data_dir} is not a folder. Pass the folder written by `zhlora download-data`.")
    file = data_dir / benchmark / f"{split}.jsonl"
    if not ids:
        return {}
    if not file.is_file():
        logger.warning("%s does not exist; flipped %s items are shown by id only.", file, benchmark)
        return {}
    found = {}
    for row in read_jsonl(file):
        if row.get("id") in ids:
            found[row["id"]] = {"question": row.get("question"), "choices": row.get("choices")}
    return found


def default_training_log(results_dir: str | os.PathLike) -> Path | None:
    """``<work>/results/<run>/training_log.jsonl`` for ``<work>/evaluation_results/<run>``, if present."""
    results_dir = Path(results_dir)
    candidate = results_dir.parent.parent / RUNS_DIRNAME / results_dir.name / TRAINING_LOG
    return candidate if candidate.is_file() else None


# What the report reads of forgetting.json: top-level keys and their types, keys of each row and the headline.
FORGETTING_KEYS = {"base": dict, "tuned": dict, "settings": dict, "statistics": dict, "hypotheses": dict,
                   "headline": dict, "rows": list, "perplexity": list, "flipped": dict}
FORGETTING_ROW_KEYS = ("benchmark", "level", "name")
HEADLINE_KEYS = ("text", "text_zh")


def regenerate_forgetting_hint(path: Path, forgetting: object = None) -> str:
    """The command that writes ``path`` again, with the two results folders when the file still names them."""
    sides = [forgetting.get(side, {}).get("dir") if isinstance(forgetting, dict) and isinstance(forgetting.get(side), dict)
             else None for side in ("base", "tuned")]
    base, tuned = (sides[0] or "BASE_RESULTS", sides[1] or "TUNED_RESULTS")
    return f"Write it again with `zhlora compare {base} {tuned} --output_dir {path.parent} --overwrite`."


def load_forgetting(path: str | os.PathLike) -> dict:
    """Load a ``forgetting.json`` written by ``zhlora compare``: schema version, then every key the report reads.

    A truncated, non-JSON or incomplete file is a :class:`DataError` naming the file, the key and
    the ``zhlora compare`` command that writes it again.
    """
    path = Path(path)
    try:
        forgetting = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. Run `zhlora compare BASE TUNED` first.") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}; truncated or damaged). "
                        f"{regenerate_forgetting_hint(path)}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (damaged). {regenerate_forgetting_hint(path)}") from None
    hint = regenerate_forgetting_hint(path, forgetting)
    if not isinstance(forgetting, dict) or forgetting.get("schema_version") != FORGETTING_SCHEMA_VERSION:
        raise DataError(
            f"{path} was written by another zhlora version (schema_version "
            f"{forgetting.get('schema_version') if isinstance(forgetting, dict) else None!r}). {hint}"
        )
    for key, kind in FORGETTING_KEYS.items():
        if not isinstance(forgetting.get(key), kind):
            state = "is missing" if key not in forgetting else f"is not a{'n object' if kind is dict else ' list'}"
            raise DataError(f'{path}: the key "{key}" {state}; the file is damaged or incomplete. {hint}')
    for key in HEADLINE_KEYS:
        if not isinstance(forgetting["headline"].get(key), str):
            raise DataError(f'{path}: the key "headline.{key}" is missing; the file is damaged or incomplete. {hint}')
    for number, row in enumerate(forgetting["rows"]):
        missing = [key for key in FORGETTING_ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise DataError(f'{path}: rows[{number}] lacks "{missing[0]}"; the file is damaged or incomplete. {hint}')
    return forgetting


def load_document_losses(results_dir: str | os.PathLike, name: str, entry: dict) -> list[dict] | None:
    """Per-document rows ``{id, nll, n_tokens}`` of a perplexity probe, or None when not saved."""
    if not entry.get("predictions_file"):
        return None
    file = results_dir_of(results_dir) / entry["predictions_file"]
    if not file.is_file():
        return None
    rows = read_jsonl(file)
    for line, row in enumerate(rows, start=1):
        if not isinstance(row.get("nll"), (int, float)) or not isinstance(row.get("n_tokens"), int) or "id" not in row:
            raise DataError(
                f'{file}, row {line}: a perplexity row needs "id", a number "nll" and an integer "n_tokens".'
            )
    if len(rows) != entry["n_documents"]:
        raise DataError(
            f'{file} has {len(rows)} rows but results.json says "{name}" has n_documents={entry["n_documents"]}. '
            "The folder mixes files of different runs; rerun `zhlora evaluate`."
        )
    return rows
