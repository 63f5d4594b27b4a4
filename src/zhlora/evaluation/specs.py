"""The benchmark specs under the names the evaluation code uses.

The specs — one module per benchmark, with the benchmark's language, display names and size
flag — and their registry live in :mod:`zhlora.data.benchmarks`, below the config layer so
that ``zhlora.config`` derives its defaults from them. The kinds of spec and what each
field means: :mod:`zhlora.data.benchmarks.kinds`; how each kind is run:
:mod:`zhlora.evaluation.tasks`.
"""

from zhlora.data.benchmarks import ChoiceSpec, GenerateSpec, PerplexitySpec, Spec, benchmark_names, resolve_spec

__all__ = ["ChoiceSpec", "GenerateSpec", "PerplexitySpec", "Spec", "benchmark_names", "resolve_spec"]
