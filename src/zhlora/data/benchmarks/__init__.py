"""The benchmark registry: one module per benchmark in this package, each defining ``BENCHMARK``.

Every fact about a benchmark — its language, display names, kind, size flag, subject
categories and its spec variants (prompts, scoring) — lives in its module here
(:class:`~zhlora.data.benchmarks.kinds.Benchmark`). Everything else derives from the registry:
``zhlora.config.ALL_BENCHMARKS`` and ``SIZE_FIELDS``, the analysis' reading order and chart
labels, ``zhlora ls benchmarks``. A new benchmark of a known kind is one new module in this
package (or one :func:`register` call from outside it); the evaluation engine needs no edit.

The package imports nothing but :mod:`zhlora.errors`, so the config layer can read it.

Example::

    >>> from zhlora.data.benchmarks import get, resolve_spec
    >>> get("cmmlu").language, get("cmmlu").display_zh
    ('zh', 'CMMLU')
    >>> resolve_spec("mmlu", "official").reference
    'hendrycks/test evaluate.py'
"""

from __future__ import annotations

import importlib
import pkgutil

from zhlora.data.benchmarks.kinds import (
    GSM8K_VARIANTS,
    LANGUAGES,
    PROTOCOLS,
    Benchmark,
    ChoiceSpec,
    GenerateSpec,
    PerplexitySpec,
    Spec,
)
from zhlora.errors import ZhloraError, unknown_name_error

__all__ = [
    "BENCHMARKS", "GSM8K_VARIANTS", "PROTOCOLS", "Benchmark", "ChoiceSpec", "GenerateSpec", "PerplexitySpec", "Spec",
    "benchmark_names", "get", "language_of", "reading_order", "register", "resolve_spec",
]

# The built-in benchmarks in registry order (the default --benchmarks order); other modules follow alphabetically.
BUILTIN_ORDER = ("ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en")
_NOT_BENCHMARKS = ("kinds",)

BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to the registry (after the ones already there) and return it.

    Raises a ZhloraError when the name is taken, the language unknown, or a variant's spec
    carries another name or kind: those would make results files ambiguous.
    """
    if benchmark.name in BENCHMARKS:
        raise ZhloraError(f"A benchmark named {benchmark.name!r} is already registered; choose another name.")
    if benchmark.language not in LANGUAGES:
        raise ZhloraError(f"Benchmark {benchmark.name}: language must be one of {', '.join(LANGUAGES)}, "
                          f"got {benchmark.language!r}.")
    if not benchmark.variants:
        raise ZhloraError(f"Benchmark {benchmark.name} has no spec variant.")
    for variant, spec in benchmark.variants.items():
        if spec.name != benchmark.name or spec.kind != benchmark.kind:
            raise ZhloraError(f"Benchmark {benchmark.name}: variant {variant!r} is a {spec.kind} spec named "
                              f"{spec.name!r}; every variant needs the benchmark's name and one kind ({benchmark.kind}).")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def _discover() -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_BENCHMARKS]
    ordered = [n for n in BUILTIN_ORDER if n in names] + sorted(n for n in names if n not in BUILTIN_ORDER)
    for name in ordered:
        register(importlib.import_module(f"{__name__}.{name}").BENCHMARK)


def get(name: str) -> Benchmark:
    """The registered benchmark ``name`` (a ConfigError with a did-you-mean when unknown)."""
    if name not in BENCHMARKS:
        raise unknown_name_error("benchmark", name, BENCHMARKS)
    return BENCHMARKS[name]


def benchmark_names(default_only: bool = False) -> list[str]:
    """Registered benchmarks in registry order (only those run by default, with ``default_only``)."""
    return [name for name, bench in BENCHMARKS.items() if bench.default or not default_only]


def language_of(name: str) -> str | None:
    """The language of a registered benchmark, None for a name the registry does not know."""
    bench = BENCHMARKS.get(name)
    return bench.language if bench else None


def reading_order(languages: dict[str, str | None]) -> list[str]:
    """Benchmark names (keys of ``name -> language``) in reading order: Chinese, then English, then others.

    Within a language, registered benchmarks keep registry order, unregistered ones follow
    alphabetically. Example: ``{"mmlu": "en", "ppl_zh": "zh", "ceval": "zh"}`` -> ceval, ppl_zh, mmlu.
    """
    registered = list(BENCHMARKS)

    def key(name: str) -> tuple[int, int, str]:
        language = languages[name]
        rank = LANGUAGES.index(language) if language in LANGUAGES else len(LANGUAGES)
        return rank, registered.index(name) if name in registered else len(registered), name

    return sorted(languages, key=key)


def resolve_spec(name: str, protocol: str = "lm-eval", gsm8k_variant: str = "gsm8k_cot") -> Spec:
    """The spec of benchmark ``name`` under ``protocol`` (multiple choice) or ``gsm8k_variant``.

    GSM8K has no official few-shot prompt of its own; both protocols use ``gsm8k_variant``
    (the default ``gsm8k_cot`` is the 8-shot chain-of-thought prompt the Llama 2 paper reports).
    A benchmark with one ``default`` variant (the perplexity probes) always gets it.
    """
    variants = get(name).variants
    if protocol not in PROTOCOLS:
        raise unknown_name_error("protocol", protocol, PROTOCOLS)
    if "default" in variants:
        return variants["default"]
    if set(variants) <= set(PROTOCOLS):
        if protocol not in variants:
            raise unknown_name_error(f"{name} protocol", protocol, variants)
        return variants[protocol]
    if gsm8k_variant not in variants:
        raise unknown_name_error(f"{name} variant", gsm8k_variant, variants)
    return variants[gsm8k_variant]


_discover()
