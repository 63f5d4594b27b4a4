"""Subject -> category tables of the three multiple-choice benchmarks (package data).

The tables live in ``zhlora/data/mappings/{ceval,cmmlu,mmlu}.json`` and follow the upstream
definitions (see ``docs/data.md``):

- C-Eval: 52 subjects, one of 4 categories (STEM, Social Science, Humanities, Other).
- CMMLU: 67 subjects in 5 categories; the 15 subjects with the "china specific" subcategory
  also count in a second category, so ``categories`` can hold two labels.
- MMLU: 57 subjects with two schemes: ``lm_eval`` (lm-evaluation-harness groups: stem,
  humanities, social_sciences, other; the default) and ``original`` (hendrycks/test
  ``categories.py``). They differ on one subject: ``anatomy``.

Example::

    >>> from zhlora.data.categories import subject_table, category_names
    >>> subject_table("cmmlu")["ancient_chinese"].categories
    ('Social Science', 'China specific')
    >>> category_names("mmlu", "original")
    ('STEM', 'humanities', 'social sciences', 'other (business, health, misc.)')
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

from zhlora.data import benchmarks as registry
from zhlora.errors import unknown_name_error

# The benchmarks whose registry entry says a table ships in mappings/<name>.json.
BENCHMARKS = tuple(name for name, bench in registry.BENCHMARKS.items() if bench.categories)


@dataclass(frozen=True)
class SubjectInfo:
    """One subject of a benchmark.

    ``categories`` are the labels under the benchmark's default scheme (CMMLU: one or two).
    ``lm_eval_group`` and ``original_category`` are set for MMLU only.
    """

    subject: str
    name_en: str
    name_zh: str
    categories: tuple[str, ...]
    lm_eval_group: str | None = None
    original_category: str | None = None

    def categories_in(self, scheme: str) -> tuple[str, ...]:
        """The subject's labels under ``scheme`` (MMLU: ``lm_eval`` or ``original``; else ``default``)."""
        if scheme == "original" and self.original_category is not None:
            return (self.original_category,)
        if scheme in ("lm_eval", "default"):
            return self.categories
        raise unknown_name_error("category scheme", scheme, ["default", "lm_eval", "original"])


@functools.cache
def _load(benchmark: str) -> dict:
    if benchmark not in BENCHMARKS:
        raise unknown_name_error("benchmark", benchmark, BENCHMARKS)
    text = resources.files("zhlora.data").joinpath("mappings", f"{benchmark}.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def subject_table(benchmark: str) -> dict[str, SubjectInfo]:
    """All subjects of ``benchmark`` (ceval, cmmlu or mmlu), keyed by the upstream handle."""
    raw = _load(benchmark)
    table = {}
    for subject, row in raw["subjects"].items():
        if benchmark == "mmlu":
            categories = (row["lm_eval_group"],)
        else:
            categories = tuple(row["categories"])
        table[subject] = SubjectInfo(
            subject=subject,
            name_en=row["name_en"],
            name_zh=row["name_zh"],
            categories=categories,
            lm_eval_group=row.get("lm_eval_group"),
            original_category=row.get("original_category"),
        )
    return table


def category_names(benchmark: str, scheme: str | None = None) -> tuple[str, ...]:
    """The category labels of ``benchmark`` in display order.

    ``scheme`` is ``None`` for the benchmark's default (MMLU: ``lm_eval``), or ``original``
    for MMLU's hendrycks/test categories.
    """
    raw = _load(benchmark)
    scheme = scheme or raw["default_scheme"]
    if scheme == "default":
        scheme = raw["default_scheme"]
    if scheme not in raw["schemes"]:
        raise unknown_name_error(f"{benchmark} category scheme", scheme, raw["schemes"])
    return tuple(raw["schemes"][scheme])
