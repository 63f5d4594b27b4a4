"""One builder per data source: upstream files (a local release folder or hub files) -> records.

A builder receives a :class:`RawFiles` (either ``folder``, the source's folder in the release
layout of ``docs/data.md``, or ``fetched``, the hub files by role from
``zhlora.data.hub.HUB_FILES``) and returns a :class:`BuiltSource`: the records of each split
(as plain dicts, ready for JSON lines), the files it read, and details for the manifest.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhlora.data import normalize
from zhlora.data.archives import extract_zip
from zhlora.data.categories import subject_table
from zhlora.data.readers import iter_json_records, iter_parquet_rows, read_text
from zhlora.data.sampling import sample_train_heldout
from zhlora.errors import DataError

logger = logging.getLogger(__name__)

# The splits each source writes (data/<source>/<split>.jsonl).
SOURCE_SPLITS: dict[str, tuple[str, ...]] = {
    "belle": ("train", "heldout"),
    "ceval": ("dev", "val", "test"),
    "cmmlu": ("dev", "test"),
    "mmlu": ("dev", "val", "test"),
    "gsm8k": ("train", "test"),
    "english_text": ("test",),
    "alpaca": ("train",),
}


@dataclass
class RawFiles:
    """Where a source's upstream files are: a release-layout folder, or hub files by role."""

    folder: Path | None = None
    fetched: dict[str, Path] = field(default_factory=dict)


@dataclass
class BelleOptions:
    """How many BELLE rows to keep for training and for the held-out slice, and the seed."""

    sample_size: int
    heldout_size: int
    seed: int


@dataclass
class BuiltSource:
    """The normalized records of each split, the files read, and notes for the manifest."""

    splits: dict[str, list[dict[str, Any]]]
    files_read: list[Path]
    details: dict[str, Any] = field(default_factory=dict)


def _as_dicts(records) -> list[dict[str, Any]]:
    return [dataclasses.asdict(record) for record in records]


def _split_folder(folder: Path, split: str, name: str) -> Path:
    path = folder / split
    if not path.is_dir() or not any(path.glob("*.csv")):
        raise DataError(
            f"{path}: missing the {split} split of {name} (expected CSV files there). The folder must hold the "
            f"release layout described in docs/data.md, e.g. {folder}/{split}/<subject>"
            + ("_<split>.csv" if name != "cmmlu" else ".csv")
            + "."
        )
    return path


def _release_root(extracted: Path, splits: tuple[str, ...], archive: Path) -> Path:
    """The folder holding the split folders in an extracted archive (top level or one folder down)."""
    for candidate in [extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())]:
        if all((candidate / split).is_dir() for split in splits):
            return candidate
    raise DataError(
        f"{archive}: the archive has no {'/'.join(splits)} folders; the upstream layout may have changed "
        "(see HUB_FILES in zhlora/data/hub.py)."
    )


def _check_unique_ids(split_records: list[dict[str, Any]], name: str, split: str) -> None:
    counts = Counter(record["id"] for record in split_records)
    duplicates = [item for item, count in counts.items() if count > 1]
    if duplicates:
        raise DataError(
            f"{name} {split}: item id {duplicates[0]} occurs {counts[duplicates[0]]} times; ids must be unique so "
            "that two evaluations can be paired item by item. Check the input files for duplicated rows."
        )


def _warn_unknown_subjects(subjects: set[str], benchmark: str) -> None:
    unknown = sorted(subjects - set(subject_table(benchmark)))
    if unknown:
        logger.warning(
            "%s: %d subject(s) not in zhlora's category table (%s); they will have no category",
            benchmark, len(unknown), ", ".join(unknown[:5]),
        )


def _read_csv_release(
    root: Path, name: str, read: Callable[[Path, str, str], list], subject_of: Callable[[Path, str], str]
) -> BuiltSource:
    """Read every ``<split>/*.csv`` under ``root`` (the release layout of C-Eval, CMMLU, MMLU)."""
    out: dict[str, list[dict[str, Any]]] = {}
    files_read: list[Path] = []
    subjects: set[str] = set()
    for split in SOURCE_SPLITS[name]:
        records = []
        for path in sorted(_split_folder(root, split, name).glob("*.csv")):
            subject = subject_of(path, split)
            subjects.add(subject)
            records.extend(read(path, subject, split))
            files_read.append(path)
        out[split] = _as_dicts(records)
        _check_unique_ids(out[split], name, split)
    _warn_unknown_subjects(subjects, name)
    return BuiltSource(splits=out, files_read=files_read, details={"subjects": len(subjects)})


def _csv_benchmark(
    raw: RawFiles, name: str, read: Callable[[Path, str, str], list], subject_of: Callable[[Path, str], str]
) -> BuiltSource:
    """C-Eval and CMMLU: the release folder, or the release zip from the hub (extracted safely)."""
    if raw.folder is not None:
        return _read_csv_release(raw.folder, name, read, subject_of)
    archive = raw.fetched["archive"]
    with tempfile.TemporaryDirectory(prefix=f"zhlora-{name}-") as tmp:
        extract_zip(archive, tmp)
        built = _read_csv_release(_release_root(Path(tmp), SOURCE_SPLITS[name], archive), name, read, subject_of)
    built.files_read = [archive]
    return built


def _subject_with_split_suffix(path: Path, split: str) -> str:
    suffix = f"_{split}"
    if not path.stem.endswith(suffix):
        raise DataError(f"{path}: expected a file named <subject>{suffix}.csv in the {split} folder.")
    return path.stem[: -len(suffix)]


def build_ceval(raw: RawFiles) -> BuiltSource:
    """C-Eval: ``{dev,val,test}/<subject>_<split>.csv``; test rows keep ``answer: null``."""
    return _csv_benchmark(raw, "ceval", normalize.ceval_questions, _subject_with_split_suffix)


def build_cmmlu(raw: RawFiles) -> BuiltSource:
    """CMMLU: ``{dev,test}/<subject>.csv``."""
    return _csv_benchmark(raw, "cmmlu", normalize.cmmlu_questions, lambda path, split: path.stem)


def build_mmlu(raw: RawFiles) -> BuiltSource:
    """MMLU: the authors' headerless ``{dev,val,test}/<subject>_<split>.csv``, or the hub's Parquet."""
    if raw.folder is not None:
        return _csv_benchmark(raw, "mmlu", normalize.mmlu_questions, _subject_with_split_suffix)
    out = {}
    subjects: set[str] = set()
    for split in SOURCE_SPLITS["mmlu"]:
        position: Counter[str] = Counter()
        records = []
        for where, row in iter_parquet_rows(raw.fetched[split], ["question", "subject", "choices", "answer"]):
            subject = row["subject"]
            records.append(normalize.mmlu_question_from_hub_row(where, row, split, position[subject]))
            position[subject] += 1
        subjects.update(position)
        out[split] = _as_dicts(records)
        _check_unique_ids(out[split], "mmlu", split)
    _warn_unknown_subjects(subjects, "mmlu")
    return BuiltSource(splits=out, files_read=list(raw.fetched.values()), details={"subjects": len(subjects)})


def build_gsm8k(raw: RawFiles) -> BuiltSource:
    """GSM8K: ``{train,test}.jsonl`` of ``{"question", "answer"}``, or the hub's Parquet."""
    out, files_read = {}, []
    for split in SOURCE_SPLITS["gsm8k"]:
        if raw.folder is not None:
            path = raw.folder / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path}: missing the {split} split of gsm8k (expected {split}.jsonl, see docs/data.md).")
            rows = iter_json_records(path)
        else:
            path = raw.fetched[split]
            rows = iter_parquet_rows(path, ["question", "answer"])
        out[split] = _as_dicts(normalize.gsm8k_problem(where, row, split, n) for n, (where, row) in enumerate(rows))
        files_read.append(path)
    return BuiltSource(splits=out, files_read=files_read)


def build_english_text(raw: RawFiles) -> BuiltSource:
    """English held-out text: WikiText ``*.txt`` (locally) or the hub's Parquet, one record per article."""
    if raw.folder is not None:
        paths = sorted(raw.folder.glob("*.txt"))
        if not paths:
            raise DataError(f"{raw.folder}: missing the test split of english_text (expected *.txt files, see docs/data.md).")
        documents = [doc for path in paths for doc in normalize.split_wikitext_articles(read_text(path))]
    else:
        paths = [raw.fetched["test"]]
        lines = (row["text"] or "" for _, row in iter_parquet_rows(paths[0], ["text"]))
        documents = normalize.split_wikitext_articles("".join(lines))
    if not documents:
        raise DataError(f"{', '.join(map(str, paths))}: no text found for the English perplexity probe.")
    return BuiltSource(splits={"test": _as_dicts(documents)}, files_read=paths)


def _instruction_files(folder: Path, name: str) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl")) if folder.is_dir() else []
    if not paths:
        raise DataError(
            f"{folder}: missing the train split of {name} (expected *.json / *.jsonl files of "
            '{"instruction", "input", "output"} rows, see docs/data.md).'
        )
    return paths


def _instruction_rows(raw: RawFiles, name: str) -> tuple[Iterator[tuple[str, dict]], list[Path]]:
    if raw.folder is not None:
        paths = _instruction_files(raw.folder, name)
        rows = itertools.chain.from_iterable(iter_json_records(p, progress=True) for p in paths)
        return rows, paths
    path = raw.fetched["train"]
    if path.suffix == ".parquet":
        return iter_parquet_rows(path, ["instruction", "input", "output"], progress=True), [path]
    return iter_json_records(path, progress=True), [path]


def build_belle(raw: RawFiles, options: BelleOptions) -> BuiltSource:
    """BELLE: a seeded sample of ``sample_size`` training rows plus a disjoint held-out slice.

    The input is streamed once (reservoir sampling), so the 2M-row file never sits in memory.
    """
    rows, files_read = _instruction_rows(raw, "belle")
    fixed = Counter()

    def records():
        for where, row in rows:
            record = normalize.instruction_from_row(where, row, fix_literal_newlines=True)
            if "\\n" in row["instruction"] or "\\n" in (row.get("input") or ""):
                fixed["rows"] += 1
            yield dataclasses.asdict(record)

    train, heldout, seen = sample_train_heldout(records(), options.sample_size, options.heldout_size, options.seed)
    if len(train) < options.sample_size or len(heldout) < options.heldout_size:
        logger.warning(
            "belle: only %d rows available; using %d for training and %d held out (asked for %d + %d)",
            seen, len(train), len(heldout), options.sample_size, options.heldout_size,
        )
    empty = {split: sum(not row["output"].strip() for row in rows) for split, rows in (("train", train), ("heldout", heldout))}
    if any(empty.values()):
        logger.warning(
            "belle: %d of %d training rows and %d of %d held-out rows have an empty output; preprocess drops them "
            "(nothing to learn). Check the source files (%s).", empty["train"], len(train), empty["heldout"],
            len(heldout), ", ".join(str(p) for p in files_read),
        )
    details = {
        "rows_available": seen,
        "train_requested": options.sample_size,
        "heldout_requested": options.heldout_size,
        "seed": options.seed,
        "rows_with_literal_newlines_fixed": fixed["rows"],
        "rows_with_empty_output": empty,
    }
    return BuiltSource(splits={"train": train, "heldout": heldout}, files_read=files_read, details=details)


def build_alpaca(raw: RawFiles) -> BuiltSource:
    """Alpaca (English instructions for replay): every row, in file order."""
    rows, files_read = _instruction_rows(raw, "alpaca")
    records = [normalize.instruction_from_row(where, row) for where, row in rows]
    return BuiltSource(splits={"train": _as_dicts(records)}, files_read=files_read)
