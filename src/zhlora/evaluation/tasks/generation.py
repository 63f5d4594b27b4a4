"""The generation task: greedy answers to few-shot prompts, a regex-extracted answer, exact match.

Used by every :class:`~zhlora.data.benchmarks.kinds.GenerateSpec` (GSM8K's two variants).
The semantics are lm-evaluation-harness's (``filters/extraction.py`` RegexFilter and
``api/metrics.py`` exact_match), so strict-match and flexible-extract scores are comparable
with published lm-eval numbers. A unit is :data:`~zhlora.evaluation.benchdata.CHUNK_ITEMS`
consecutive items.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from zhlora.data.benchmarks import GenerateSpec
from zhlora.data.readers import iter_json_records
from zhlora.data.records import MathProblem
from zhlora.evaluation.benchdata import ALL, BenchmarkItems, Unit, chunked_units, data_file, read_benchmark_record
from zhlora.evaluation.engine import EvalEngine
from zhlora.evaluation.prefix import PrefixUse
from zhlora.evaluation.prompts import fewshot_prompt
from zhlora.evaluation.scoring import summarize_generate
from zhlora.io_utils import sha256_file

INVALID = "[invalid]"


def reference_answer(answer_text: str, delimiter: str = "####") -> str:
    """The gold answer of a worked solution: the text after its last ``delimiter``, stripped.

    Example: ``"... = 18.\\n#### 18"`` -> ``"18"``.
    """
    return answer_text.split(delimiter)[-1].strip()


def extract_answer(generation: str, pattern: str, group_select: int) -> str:
    """The ``group_select``-th regex match in ``generation`` (0 first, -1 last), or ``[invalid]``.

    With several capture groups a match is a tuple; its first non-empty group is used.
    Example: ``extract_answer("so 5 + 4 = 9. The answer is 9.", r"The answer is (\\-?[0-9\\.\\,]+).", 0)`` -> ``"9"``.
    """
    matches = re.findall(pattern, generation)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [group for group in match if group]
        match = non_empty[0] if non_empty else INVALID
    return match.strip()


def normalize_answer(text: str, ignore_regexes: tuple[str, ...]) -> str:
    """Remove every ``ignore_regexes`` match (in order) and lower-case, as lm-eval's exact_match does.

    Example with GSM8K's regexes: ``"$1,000."`` -> ``"1000"``.
    """
    for pattern in ignore_regexes:
        text = re.sub(pattern, "", text)
    return text.lower()


def random_shot_indices(pool_size: int, n_items: int, shots: int, seed: int) -> list[list[int]]:
    """Indices of the shots of each of ``n_items`` successive items, drawn as lm-eval does.

    lm-eval keeps one ``random.Random(seed)`` per task and calls ``sample(pool, shots)`` once per
    evaluated document in order, so item ``i`` gets the ``i``-th draw.
    """
    rnd = random.Random(seed)
    population = range(pool_size)
    return [rnd.sample(population, shots) for _ in range(n_items)]


def generate_prompts(bench: BenchmarkItems, start: int, problems: Sequence) -> list[str]:
    """The few-shot prompts of ``problems`` (items ``start..`` of the benchmark)."""
    spec: GenerateSpec = bench.spec
    if spec.fewshot_samples:
        fixed = [(spec.doc_to_text.format(question=q), target) for q, target in spec.fewshot_samples[: bench.shots]]
        shot_lists = [fixed] * len(problems)
    else:
        pool = bench.fewshot.get(ALL, [])
        draws = random_shot_indices(len(pool), start + len(problems), bench.shots, spec.fewshot_seed)[start:]
        shot_lists = [[(spec.doc_to_text.format(question=pool[j].question), pool[j].answer_text) for j in draw]
                      for draw in draws]
    return [
        fewshot_prompt("", shots, spec.doc_to_text.format(question=p.question), spec.target_delimiter,
                       spec.fewshot_delimiter).text
        for shots, p in zip(shot_lists, problems)
    ]


class GenerationTask:
    """Load, run and score :class:`GenerateSpec` benchmarks (see :class:`~zhlora.evaluation.tasks.Task`)."""

    kind = "generate"
    shares_prefix = False

    def load(self, data_dir: Path, spec: GenerateSpec, *, shots: int | None, subjects: Sequence[str] | None,
             limit: int | None, prompt_template: str, tokenizer) -> BenchmarkItems:
        """The first ``limit`` problems and, for drawn shots, the few-shot pool (``shots`` is the spec's)."""
        eval_path = data_file(data_dir, spec.source, spec.eval_split)
        items = [read_benchmark_record(MathProblem, where, row) for where, row in iter_json_records(eval_path)][:limit]
        files = {f"{spec.source}/{eval_path.name}": sha256_file(eval_path)}
        fewshot: dict[str, list] = {}
        if not spec.fewshot_samples and spec.default_shots > 0:
            pool_path = data_file(data_dir, spec.source, spec.fewshot_split)
            fewshot[ALL] = [read_benchmark_record(MathProblem, where, row) for where, row in iter_json_records(pool_path)]
            files[f"{spec.source}/{pool_path.name}"] = sha256_file(pool_path)
        return BenchmarkItems(spec=spec, groups={ALL: items}, shots=spec.default_shots, fewshot=fewshot, files_sha256=files)

    def units(self, bench: BenchmarkItems) -> list[Unit]:
        """Chunks of consecutive problems."""
        return chunked_units(bench.groups[ALL])

    def run(self, engine: EvalEngine, bench: BenchmarkItems, unit: Unit, *, max_new_tokens: int,
            prefix_use: PrefixUse | None) -> list[dict]:
        """Prediction rows ``{id, gold, predicted, predicted_flexible, correct, correct_flexible, generated}``."""
        spec: GenerateSpec = bench.spec
        texts = engine.generate(generate_prompts(bench, unit.start, unit.items), spec.stop, max_new_tokens)
        rows = []
        for problem, text in zip(unit.items, texts):
            gold = normalize_answer(reference_answer(problem.answer_text, spec.answer_delimiter), spec.ignore_regexes)
            strict = extract_answer(text, spec.strict_regex, 0)
            flexible = extract_answer(text, spec.flexible_regex, -1)
            rows.append({
                "id": problem.id, "gold": gold, "predicted": strict, "predicted_flexible": flexible,
                "correct": normalize_answer(strict, spec.ignore_regexes) == gold,
                "correct_flexible": normalize_answer(flexible, spec.ignore_regexes) == gold,
                "generated": text,
            })
        return rows

    def summarize(self, bench: BenchmarkItems, rows: Sequence[dict]) -> dict:
        """Variant, shots, strict and flexible exact match."""
        return {"variant": bench.spec.variant, "shots": bench.shots, **summarize_generate(rows)}
