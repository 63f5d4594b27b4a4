"""The multiple-choice task: few-shot prompts per subject, options scored by log-likelihood.

Used by every :class:`~zhlora.data.benchmarks.kinds.ChoiceSpec` (C-Eval, CMMLU, MMLU). A unit
is one subject; its requests share the subject's description and shots, whose token ids the
engine may compute once (:mod:`zhlora.evaluation.prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zhlora.data import benchmarks
from zhlora.data.benchmarks import ChoiceSpec
from zhlora.data.categories import subject_table
from zhlora.errors import DataError
from zhlora.evaluation.benchdata import BenchmarkItems, Unit, by_subject, data_file, read_questions
from zhlora.evaluation.engine import EvalEngine
from zhlora.evaluation.prefix import PrefixUse
from zhlora.evaluation.prompts import fewshot_prompt
from zhlora.evaluation.requests import ChoiceRequest, encode_choice
from zhlora.evaluation.scoring import LL_DIGITS, predicted_letter, summarize_choice
from zhlora.evaluation.tasks.choice import letter_token_ids, question_fields, subject_fields
from zhlora.io_utils import sha256_file


def choice_requests(tokenizer, bench: BenchmarkItems, subject: str, questions: Sequence) -> list[ChoiceRequest]:
    """The requests of one subject's questions under the benchmark's spec and shots."""
    spec: ChoiceSpec = bench.spec
    info = bench.subjects.get(subject)
    description = spec.description.format(**subject_fields(subject, info.name_zh if info else None))
    shots = [
        (spec.doc_to_text.format(**question_fields(q)), q.answer)
        for q in bench.fewshot.get(subject, [])[: bench.shots]
    ]
    letter_ids: tuple[int, ...] = ()
    continuations: tuple[str, ...] = ()
    if spec.scoring.startswith("letter_token:"):
        letter_ids = tuple(letter_token_ids(tokenizer, spec.scoring.split(":", 1)[1], spec.choices))
    else:
        continuations = tuple(spec.target_delimiter + letter for letter in spec.choices)
    return [
        ChoiceRequest(
            prompt=fewshot_prompt(description, shots, spec.doc_to_text.format(**question_fields(q)),
                                  spec.target_delimiter, spec.fewshot_delimiter),
            continuations=continuations,
            letter_token_ids=letter_ids,
        )
        for q in questions
    ]


class MultipleChoiceTask:
    """Load, run and score :class:`ChoiceSpec` benchmarks (see :class:`~zhlora.evaluation.tasks.Task`)."""

    kind = "multiple_choice"
    shares_prefix = True

    def load(self, data_dir: Path, spec: ChoiceSpec, *, shots: int | None, subjects: Sequence[str] | None,
             limit: int | None, prompt_template: str, tokenizer) -> BenchmarkItems:
        """Questions by subject (``limit`` per subject), the few-shot pool when ``shots`` > 0, the subject table."""
        shots = spec.default_shots if shots is None else shots
        eval_path = data_file(data_dir, spec.source, spec.eval_split)
        groups = by_subject(read_questions(eval_path))
        available = tuple(groups)
        if subjects is not None:
            groups = {s: items for s, items in groups.items() if s in subjects}
        groups = {s: items[:limit] for s, items in groups.items()}
        files = {f"{spec.source}/{eval_path.name}": sha256_file(eval_path)}
        fewshot: dict[str, list] = {}
        if shots > 0:
            pool_path = data_file(data_dir, spec.source, spec.fewshot_split)
            fewshot = by_subject(read_questions(pool_path))
            files[f"{spec.source}/{pool_path.name}"] = sha256_file(pool_path)
            for subject in groups:
                if len(fewshot.get(subject, [])) < shots:
                    raise DataError(
                        f"{pool_path} has {len(fewshot.get(subject, []))} few-shot rows for subject {subject}, fewer "
                        f"than --shots {shots}. Pass a smaller --shots, or re-download the data with --force."
                    )
        registered = benchmarks.BENCHMARKS.get(spec.name)
        table = subject_table(spec.source) if registered is not None and registered.categories else {}
        return BenchmarkItems(spec=spec, groups=groups, shots=shots, fewshot=fewshot, subjects=table, files_sha256=files,
                              available_subjects=available)

    def units(self, bench: BenchmarkItems) -> list[Unit]:
        """One unit per subject."""
        return [Unit(subject, items) for subject, items in bench.groups.items()]

    def run(self, engine: EvalEngine, bench: BenchmarkItems, unit: Unit, *, max_new_tokens: int,
            prefix_use: PrefixUse | None) -> list[dict]:
        """Prediction rows ``{id, subject, gold, predicted, correct, loglikelihoods}`` of one subject."""
        requests = choice_requests(engine.tokenizer, bench, unit.key, unit.items)
        encoded = [encode_choice(engine.tokenizer, request) for request in requests]
        prefix_ids = engine.tokenizer(requests[0].prompt.prefix, verbose=False)["input_ids"] if requests else None
        scores = engine.choice_loglikelihoods(encoded, prefix_ids)
        if prefix_use is not None:
            prefix_use.add(scores.prefix)
        letters = bench.spec.choices
        rows = []
        for question, lls in zip(unit.items, scores.loglikelihoods):
            predicted = predicted_letter(lls, letters)
            rows.append({
                "id": question.id, "subject": unit.key, "gold": question.answer, "predicted": predicted,
                "correct": predicted == question.answer, "loglikelihoods": [round(x, LL_DIGITS) for x in lls],
            })
        return rows

    def summarize(self, bench: BenchmarkItems, rows: Sequence[dict]) -> dict:
        """Shots, micro/macro accuracy, categories and subjects."""
        return {"shots": bench.shots, **summarize_choice(rows, bench.subjects, bench.spec.category_scheme)}
