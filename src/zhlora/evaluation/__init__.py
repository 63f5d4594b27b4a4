"""Evaluation: one task per kind of benchmark spec (``tasks``) behind one engine interface (``engine``).

The specs and every other fact about a benchmark live in the registry, :mod:`zhlora.data.benchmarks`.

Library API (works on an in-memory model, e.g. during training)::

    from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items, resolve_spec

    items = {"mmlu": load_benchmark_items("data", resolve_spec("mmlu"), limit=5)}
    results = evaluate_benchmarks(model, tokenizer, items)   # {"mmlu": BenchmarkResult(summary, predictions, seconds)}

The evaluation recipe, :func:`zhlora.recipes.evaluate.evaluate` (what ``zhlora evaluate`` calls),
adds model/adapter loading, the identity and resume rules, and the results folder. See
docs/evaluation.md.
"""

from zhlora.data.benchmarks import benchmark_names, resolve_spec
from zhlora.evaluation.items import BenchmarkItems, load_benchmark_items
from zhlora.evaluation.runner import BenchmarkResult, evaluate_benchmarks

__all__ = [
    "BenchmarkItems",
    "BenchmarkResult",
    "benchmark_names",
    "evaluate_benchmarks",
    "load_benchmark_items",
    "resolve_spec",
]
