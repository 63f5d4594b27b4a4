"""The loaded data of one benchmark, its cached units of work, and the file readers every task uses.

A task (:mod:`zhlora.evaluation.tasks`) reads a spec's normalized data files
(``data/<source>/<split>.jsonl``) into a :class:`BenchmarkItems` once: the scored items
grouped by subject (multiple choice) or in one ``"all"`` group, the few-shot pool, the subject
table and the sha256 of every file read (recorded in ``results.json``). A :class:`Unit` is the
smallest piece of work that is cached and shared between data-parallel processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.data.benchmarks import Spec
from zhlora.data.categories import SubjectInfo
from zhlora.data.readers import iter_json_records
from zhlora.data.records import ANSWER_LETTERS, ChoiceQuestion
from zhlora.errors import DataError

ALL = "all"
CHUNK_ITEMS = 64  # items per cached unit of a benchmark without subjects


@dataclass(frozen=True)
class TextItem:
    """One perplexity document: ``prompt`` (not scored, may be empty) and the scored ``text``."""

    id: str
    prompt: str
    text: str


@dataclass
class BenchmarkItems:
    """The data of one benchmark, ready for the engine.

    ``groups`` maps a subject (multiple choice) or ``"all"`` to the scored items in file order;
    ``fewshot`` maps the same keys to the few-shot pool; ``shots`` is how many shots each item
    gets; ``subjects`` is the subject table (empty for benchmarks without one);
    ``files_sha256`` maps ``<source>/<split>.jsonl`` to its sha256; ``available_subjects`` are
    the subjects in the data file before any ``subjects`` filter.
    """

    spec: Spec
    groups: dict[str, list]
    shots: int = 0
    fewshot: dict[str, list] = field(default_factory=dict)
    subjects: dict[str, SubjectInfo] = field(default_factory=dict)
    files_sha256: dict[str, str] = field(default_factory=dict)
    available_subjects: tuple[str, ...] = ()

    @property
    def n_items(self) -> int:
        """Scored items over all groups."""
        return sum(len(items) for items in self.groups.values())


@dataclass(frozen=True)
class Unit:
    """A cached piece of work: ``items`` starting at index ``start`` of their group."""

    key: str
    items: list
    start: int = 0


def chunked_units(items: list) -> list[Unit]:
    """Consecutive units of :data:`CHUNK_ITEMS` items, keyed by their index range (``items-00000-00063``)."""
    return [
        Unit(f"items-{start:05d}-{min(start + CHUNK_ITEMS, len(items)) - 1:05d}", items[start:start + CHUNK_ITEMS], start)
        for start in range(0, len(items), CHUNK_ITEMS)
    ]


def data_file(data_dir: Path, source: str, split: str) -> Path:
    """``data_dir/<source>/<split>.jsonl``; a DataError naming the download command when it is missing."""
    path = data_dir / source / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"Benchmark data {path} is missing. "
                        f"Create it with `zhlora download-data --datasets {source} --data_dir {data_dir}`.")
    return path


def read_benchmark_record(cls, where: str, row: dict):
    """Build a record dataclass from a JSON row, naming the file and line of a missing field."""
    names = [f.name for f in dataclasses.fields(cls)]
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} of a {cls.__name__} record. "
                        "Rerun download-data (with --force) to rewrite the file.")
    return cls(**{name: row[name] for name in names if name in row})


def read_questions(path: Path) -> list[ChoiceQuestion]:
    """The multiple-choice questions of a data file (4 choices and an answer A-D each, checked)."""
    questions = []
    for where, row in iter_json_records(path):
        question = read_benchmark_record(ChoiceQuestion, where, row)
        if not isinstance(question.choices, list) or len(question.choices) != len(ANSWER_LETTERS) \
                or question.answer not in ANSWER_LETTERS:
            raise DataError(f"{where}: a scored question needs a list of 4 choices and an answer A-D, got "
                            f"choices {question.choices!r} and answer {question.answer!r}.")
        questions.append(question)
    return questions


def by_subject(questions: list[ChoiceQuestion]) -> dict[str, list[ChoiceQuestion]]:
    """Questions grouped by subject, subjects and questions in file order."""
    groups: dict[str, list[ChoiceQuestion]] = {}
    for question in questions:
        groups.setdefault(question.subject, []).append(question)
    return groups
