"""Pair two evaluations item by item, refusing results that were evaluated differently.

Paired statistics are only valid when both models answered the very same items with the
same prompts and scoring; :func:`check_comparable` names every setting that differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zhlora.config import PAIRED_SETTINGS
from zhlora.errors import ZhloraError

BENCHMARK_FIELDS_THAT_MUST_MATCH = (
    "data_sha256",
    "kind",
    "spec_version",
    "split",
    "shots",
    "protocol",
    "variant",
    "n",
    "item_ids_sha256",
    "n_documents",
    "n_tokens",
)


class SettingsMismatchError(ZhloraError):
    """The two results were evaluated differently, so their items cannot be paired."""


def settings_differences(base: dict, tuned: dict) -> list[str]:
    """Every evaluation setting in which two results.json objects differ, as readable phrases."""
    differences = []
    for key in PAIRED_SETTINGS:
        if base["settings"].get(key) != tuned["settings"].get(key):
            differences.append(
                f"settings.{key} (base {base['settings'].get(key)!r}, tuned {tuned['settings'].get(key)!r})"
            )
    base_sha = base["model"].get("base_sha256")
    # a fully fine-tuned model is paired with the model it was trained from
    tuned_sha = (tuned["model"].get("finetuned_from") or {}).get("weights_sha256") or tuned["model"].get("base_sha256")
    if base_sha and tuned_sha and base_sha != tuned_sha:
        differences.append(f"the base model (sha256 {base_sha[:12]}… vs {tuned_sha[:12]}…)")
    only_base = sorted(set(base["benchmarks"]) - set(tuned["benchmarks"]))
    only_tuned = sorted(set(tuned["benchmarks"]) - set(base["benchmarks"]))
    if only_base:
        differences.append(f"benchmarks only in base: {', '.join(only_base)}")
    if only_tuned:
        differences.append(f"benchmarks only in tuned: {', '.join(only_tuned)}")
    for name in sorted(set(base["benchmarks"]) & set(tuned["benchmarks"])):
        b, t = base["benchmarks"][name], tuned["benchmarks"][name]
        for key in BENCHMARK_FIELDS_THAT_MUST_MATCH:
            if b.get(key) != t.get(key):
                what = {"item_ids_sha256": "item set", "data_sha256": "data files (sha256)"}.get(key, key)
                differences.append(f"{name}.{what} (base {_short(b.get(key))}, tuned {_short(t.get(key))})")
    return differences


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 20 else text[:16] + "…'"


def check_comparable(base: dict, tuned: dict, base_name: str, tuned_name: str) -> None:
    """Raise :class:`SettingsMismatchError` naming every setting that differs."""
    differences = settings_differences(base, tuned)
    if differences:
        raise SettingsMismatchError(
            f"Refusing to compare {base_name} with {tuned_name}: they were evaluated with different settings, "
            f"so their items cannot be paired. Differences: {'; '.join(differences)}. Re-evaluate both with the "
            "same --benchmarks, --protocol, --shots, --limit, --gsm8k_limit, --ppl_zh_documents, --ppl_en_documents, "
            "--subjects and --gsm8k_variant."
        )


@dataclass
class PairedItems:
    """Prediction rows of one benchmark from both models, aligned by item id (base file order)."""

    base_rows: list[dict]
    tuned_rows: list[dict]

    @property
    def base_correct(self) -> np.ndarray:
        return np.array([row["correct"] for row in self.base_rows], dtype=bool)

    @property
    def tuned_correct(self) -> np.ndarray:
        return np.array([row["correct"] for row in self.tuned_rows], dtype=bool)


def pair_predictions(name: str, base_rows: Sequence[dict], tuned_rows: Sequence[dict]) -> PairedItems:
    """Align two prediction files by item id; a different item set is a settings mismatch."""
    tuned_by_id = {row["id"]: row for row in tuned_rows}
    base_ids = {row["id"] for row in base_rows}
    only_base = [row["id"] for row in base_rows if row["id"] not in tuned_by_id]
    only_tuned = [row["id"] for row in tuned_rows if row["id"] not in base_ids]
    if only_base or only_tuned:
        example = (only_base or only_tuned)[0]
        raise SettingsMismatchError(
            f'The two evaluations of "{name}" scored different items ({len(only_base)} only in base, '
            f"{len(only_tuned)} only in tuned, e.g. {example!r}). Re-evaluate both with the same data and flags."
        )
    return PairedItems(list(base_rows), [tuned_by_id[row["id"]] for row in base_rows])
