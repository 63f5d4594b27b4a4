"""Read a benchmark's normalized data files (``data/<source>/<split>.jsonl``) into typed items.

The kind of spec decides how (its task's ``load``, :mod:`zhlora.evaluation.tasks`); what comes
back is a :class:`~zhlora.evaluation.benchdata.BenchmarkItems`: the scored items grouped by
subject (multiple choice) or in one ``"all"`` group, the few-shot pool, the subject table and
the sha256 of every file read (recorded in ``results.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from zhlora.data.benchmarks import Spec
from zhlora.evaluation.benchdata import ALL, BenchmarkItems, TextItem
from zhlora.evaluation.tasks import task_for

__all__ = ["ALL", "BenchmarkItems", "TextItem", "load_benchmark_items"]


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
    return task_for(spec).load(Path(data_dir), spec, shots=shots, subjects=subjects, limit=limit,
                               prompt_template=prompt_template, tokenizer=tokenizer)
