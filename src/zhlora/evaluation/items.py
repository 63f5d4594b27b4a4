"""Read a benchmark's normalized data files (``data/<source>/<split>.jsonl``) into typed items.

What a spec needs is loaded once: the scored items grouped by subject (multiple choice) or
in one ``"all"`` group, the few-shot pool, the subject table and the sha256 of every file
read (recorded in ``results.json``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.data.categories import BENCHMARKS as CATEGORIZED_BENCHMARKS
from zhlora.data.categories import SubjectInfo, subject_table
from zhlora.data.readers import iter_json_records
from zhlora.data.records import ANSWER_LETTERS, ChoiceQuestion, MathProblem
from zhlora.data.templates import render_prompt
from zhlora.errors import DataError
from zhlora.evaluation.specs import ChoiceSpec, GenerateSpec, PerplexitySpec, Spec
from zhlora.io_utils import sha256_file

ALL = "all"


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


def _download_hint(data_dir: Path, source: str) -> str:
    return f"Create it with `zhlora download-data --datasets {source} --data_dir {data_dir}`."


def _data_file(data_dir: Path, source: str, split: str) -> Path:
    path = data_dir / source / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"Benchmark data {path} is missing. {_download_hint(data_dir, source)}")
    return path


def _record(cls, where: str, row: dict):
    """Build a record dataclass from a JSON row, naming the file and line of a missing field."""
    names = [f.name for f in dataclasses.fields(cls)]
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} of a {cls.__name__} record. "
                        "Rerun download-data (with --force) to rewrite the file.")
    return cls(**{name: row[name] for name in names if name in row})


def _questions(path: Path) -> list[ChoiceQuestion]:
    questions = []
    for where, row in iter_json_records(path):
        question = _record(ChoiceQuestion, where, row)
        if not isinstance(question.choices, list) or len(question.choices) != len(ANSWER_LETTERS) \
                or question.answer not in ANSWER_LETTERS:
            raise DataError(f"{where}: a scored question needs a list of 4 choices and an answer A-D, got "
                            f"choices {question.choices!r} and answer {question.answer!r}.")
        questions.append(question)
    return questions


def _by_subject(questions: list[ChoiceQuestion]) -> dict[str, list[ChoiceQuestion]]:
    groups: dict[str, list[ChoiceQuestion]] = {}
    for question in questions:
        groups.setdefault(question.subject, []).append(question)
    return groups


def _load_choice(data_dir: Path, spec: ChoiceSpec, subjects: Sequence[str] | None, limit: int | None, shots: int) -> BenchmarkItems:
    eval_path = _data_file(data_dir, spec.source, spec.eval_split)
    groups = _by_subject(_questions(eval_path))
    available = tuple(groups)
    if subjects is not None:
        groups = {s: items for s, items in groups.items() if s in subjects}
    groups = {s: items[:limit] for s, items in groups.items()}
    files = {f"{spec.source}/{eval_path.name}": sha256_file(eval_path)}
    fewshot: dict[str, list] = {}
    if shots > 0:
        pool_path = _data_file(data_dir, spec.source, spec.fewshot_split)
        fewshot = _by_subject(_questions(pool_path))
        files[f"{spec.source}/{pool_path.name}"] = sha256_file(pool_path)
        for subject in groups:
            if len(fewshot.get(subject, [])) < shots:
                raise DataError(
                    f"{pool_path} has {len(fewshot.get(subject, []))} few-shot rows for subject {subject}, fewer "
                    f"than --shots {shots}. Pass a smaller --shots, or re-download the data with --force."
                )
    table = subject_table(spec.source) if spec.source in CATEGORIZED_BENCHMARKS else {}
    return BenchmarkItems(spec=spec, groups=groups, shots=shots, fewshot=fewshot, subjects=table, files_sha256=files,
                          available_subjects=available)


def _load_generate(data_dir: Path, spec: GenerateSpec, limit: int | None) -> BenchmarkItems:
    eval_path = _data_file(data_dir, spec.source, spec.eval_split)
    items = [_record(MathProblem, where, row) for where, row in iter_json_records(eval_path)][:limit]
    files = {f"{spec.source}/{eval_path.name}": sha256_file(eval_path)}
    fewshot: dict[str, list] = {}
    if not spec.fewshot_samples and spec.default_shots > 0:
        pool_path = _data_file(data_dir, spec.source, spec.fewshot_split)
        fewshot[ALL] = [_record(MathProblem, where, row) for where, row in iter_json_records(pool_path)]
        files[f"{spec.source}/{pool_path.name}"] = sha256_file(pool_path)
    return BenchmarkItems(spec=spec, groups={ALL: items}, shots=spec.default_shots, fewshot=fewshot, files_sha256=files)


def _load_perplexity(data_dir: Path, spec: PerplexitySpec, limit: int | None, prompt_template: str,
                     tokenizer) -> BenchmarkItems:
    path = _data_file(data_dir, spec.source, spec.eval_split)
    items = []
    for index, (where, row) in enumerate(iter_json_records(path)):
        item_id = str(row.get("id", f"{spec.source}-{spec.eval_split}-{index}"))
        if spec.target == "response":
            for key in ("instruction", "output"):
                if not isinstance(row.get(key), str):
                    raise DataError(f"{where}: an instruction row needs a text field {key!r}.")
            prompt = render_prompt(prompt_template, row["instruction"], row.get("input") or "", tokenizer)
            items.append(TextItem(item_id, prompt, row["output"]))
        else:
            if not isinstance(row.get("text"), str):
                raise DataError(f"{where}: a text document needs a text field 'text'.")
            if row["text"].strip():
                items.append(TextItem(item_id, "", row["text"]))
    return BenchmarkItems(spec=spec, groups={ALL: items[:limit]}, files_sha256={f"{spec.source}/{path.name}": sha256_file(path)})


def load_benchmark_items(
    data_dir: str | os.PathLike,
    spec: Spec,
    *,
    shots: int | None = None,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    prompt_template: str = "alpaca",
    tokenizer=None,
) -> BenchmarkItems:
    """Load what ``spec`` scores from ``data_dir``.

    Args:
        shots: multiple-choice shots (default: the spec's); the few-shot pool is read only if > 0.
        subjects: keep only these subjects (multiple choice); None keeps all.
        limit: at most this many items per subject (multiple choice), or in total (others).
        prompt_template: training template used to render instruction prompts (``ppl_zh``).
        tokenizer: the model's tokenizer; needed when ``prompt_template`` is ``chat``.

    Raises a DataError naming the missing file and the ``download-data`` command that makes it.
    """
    data_dir = Path(data_dir)
    if isinstance(spec, ChoiceSpec):
        return _load_choice(data_dir, spec, subjects, limit, spec.default_shots if shots is None else shots)
    if isinstance(spec, GenerateSpec):
        return _load_generate(data_dir, spec, limit)
    return _load_perplexity(data_dir, spec, limit, prompt_template, tokenizer)
