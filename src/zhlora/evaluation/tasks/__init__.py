"""Evaluation tasks: one object per kind of benchmark spec, all behind one interface.

A task turns a spec (:mod:`zhlora.data.benchmarks`) and its data files into requests for an
engine (:class:`~zhlora.evaluation.engine.EvalEngine`), and the engine's answers into
prediction rows and scores. The runner (:mod:`zhlora.evaluation.runner`) only calls the four
methods of :class:`Task`; it never asks which kind of benchmark it runs.

====================  =======================================  ==========================
kind                  task                                     engine request
====================  =======================================  ==========================
``multiple_choice``   :class:`.multiple_choice.MultipleChoiceTask`  ``choice_loglikelihoods``
``generate``          :class:`.generation.GenerationTask`          ``generate``
``perplexity``        :class:`.perplexity.PerplexityTask`          ``sequence_nll``
====================  =======================================  ==========================

A new benchmark of one of these kinds is one spec module in :mod:`zhlora.data.benchmarks`;
:mod:`.choice` holds the multiple-choice hooks a spec names (letter tokens, template fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from zhlora.data.benchmarks import Spec
from zhlora.errors import ZhloraError
from zhlora.evaluation.benchdata import BenchmarkItems, Unit
from zhlora.evaluation.engine import EvalEngine
from zhlora.evaluation.prefix import PrefixUse
from zhlora.evaluation.tasks.generation import GenerationTask
from zhlora.evaluation.tasks.multiple_choice import MultipleChoiceTask
from zhlora.evaluation.tasks.perplexity import PerplexityTask


class Task(Protocol):
    """How one kind of benchmark is loaded, cut into cached units, run on an engine and scored.

    ``shares_prefix`` says whether its units report shared few-shot prefix use (a
    :class:`~zhlora.evaluation.prefix.PrefixUse` is then passed to :meth:`run`).
    """

    kind: str
    shares_prefix: bool

    def load(self, data_dir: Path, spec: Spec, *, shots: int | None, subjects: Sequence[str] | None,
             limit: int | None, prompt_template: str, tokenizer) -> BenchmarkItems:
        """Read what ``spec`` scores from ``data_dir`` (see :func:`zhlora.evaluation.items.load_benchmark_items`)."""
        ...

    def units(self, bench: BenchmarkItems) -> list[Unit]:
        """The benchmark's units in evaluation order (the order of its prediction rows)."""
        ...

    def run(self, engine: EvalEngine, bench: BenchmarkItems, unit: Unit, *, max_new_tokens: int,
            prefix_use: PrefixUse | None) -> list[dict]:
        """The prediction rows of one unit, in item order."""
        ...

    def summarize(self, bench: BenchmarkItems, rows: Sequence[dict]) -> dict:
        """The kind's scores for ``results.json`` from all prediction rows."""
        ...


TASKS: dict[str, Task] = {task.kind: task for task in (MultipleChoiceTask(), GenerationTask(), PerplexityTask())}


def task_for(spec: Spec) -> Task:
    """The task that runs specs of ``spec.kind``."""
    task = TASKS.get(spec.kind)
    if task is None:
        raise ZhloraError(f"No evaluation task runs benchmarks of kind {spec.kind!r} ({spec.name}); "
                          f"known kinds: {', '.join(TASKS)}.")
    return task
