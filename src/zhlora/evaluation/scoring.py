"""Per-item predictions -> benchmark scores: accuracies, categories, exact match, perplexity.

Accuracy is a fraction in [0, 1]. ``accuracy_micro`` weights every question equally
(lm-eval's ``weight_by_size``, the official MMLU average); ``accuracy_macro`` is the mean of
the subject accuracies (the official CMMLU average). A category's scores use the questions /
subjects that carry its label; CMMLU subjects can carry two labels.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence

from zhlora.data.benchmarks.kinds import PERPLEXITY_UNITS
from zhlora.data.categories import SubjectInfo

DIGITS = 6  # scores are rounded to 1e-6 so results files are short and stable
LL_DIGITS = 6  # digits of the log-likelihoods and losses in prediction rows


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def item_ids_sha256(ids: Sequence[str]) -> str:
    """Identity of an item list (order matters): sha256 of the ids joined by newlines."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def predicted_letter(loglikelihoods: Sequence[float], letters: Sequence[str]) -> str:
    """The option with the highest log-likelihood (the first one on a tie, like ``numpy.argmax``)."""
    best = max(range(len(loglikelihoods)), key=lambda k: (loglikelihoods[k], -k))
    return letters[best]


def _accuracy(correct: Sequence[bool]) -> float:
    return _round(sum(correct) / len(correct)) if correct else 0.0


def summarize_choice(
    rows: Sequence[Mapping], subjects: Mapping[str, SubjectInfo], category_scheme: str = "default"
) -> dict:
    """Micro/macro accuracy overall and per category, and accuracy per subject.

    ``rows`` are prediction rows ``{id, subject, correct, ...}`` in evaluation order.
    Returns ``{n, accuracy_micro, accuracy_macro, item_ids_sha256, categories, subjects}``.
    """
    by_subject: dict[str, list[bool]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(bool(row["correct"]))
    subject_entries = {}
    by_category: dict[str, list[str]] = {}
    for subject, correct in by_subject.items():
        info = subjects.get(subject)
        labels = list(info.categories_in(category_scheme)) if info else []
        subject_entries[subject] = {
            "n": len(correct), "accuracy": _accuracy(correct), "name_zh": info.name_zh if info else None, "categories": labels,
        }
        for label in labels:
            by_category.setdefault(label, []).append(subject)
    categories = {
        label: {
            "n": sum(len(by_subject[s]) for s in members),
            "accuracy_micro": _accuracy([c for s in members for c in by_subject[s]]),
            "accuracy_macro": _round(sum(sum(by_subject[s]) / len(by_subject[s]) for s in members) / len(members)),
        }
        for label, members in sorted(by_category.items())
    }
    all_correct = [bool(row["correct"]) for row in rows]
    macro = sum(sum(c) / len(c) for c in by_subject.values()) / len(by_subject) if by_subject else 0.0
    return {
        "n": len(rows),
        "accuracy_micro": _accuracy(all_correct),
        "accuracy_macro": _round(macro),
        "item_ids_sha256": item_ids_sha256([row["id"] for row in rows]),
        "categories": categories,
        "subjects": subject_entries,
    }


def summarize_generate(rows: Sequence[Mapping]) -> dict:
    """Exact match of the strict and flexible extractions (strict is the headline ``accuracy_micro``)."""
    strict = _accuracy([bool(row["correct"]) for row in rows])
    return {
        "n": len(rows),
        "accuracy_micro": strict,
        "exact_match_strict": strict,
        "exact_match_flexible": _accuracy([bool(row["correct_flexible"]) for row in rows]),
        "item_ids_sha256": item_ids_sha256([row["id"] for row in rows]),
    }


def text_units(text: str) -> dict:
    """Tokenizer-independent sizes of a scored text: UTF-8 bytes, characters, whitespace-separated words.

    Words are counted as lm-evaluation-harness counts them for ``wikitext`` (``count_words``:
    ``len(re.split(r"\\s+", text))``), bytes as its ``count_bytes`` (``len(text.encode("utf-8"))``).
    """
    return {"n_bytes": len(text.encode("utf-8")), "n_characters": len(text), "n_words": len(re.split(r"\s+", text))}


def per_unit(nats_per_unit: float, form: str) -> float:
    """Nats per unit as bits per unit (``form`` "bits") or as a perplexity ``exp(nats)`` ("perplexity")."""
    return nats_per_unit / math.log(2) if form == "bits" else math.exp(nats_per_unit)


def summarize_perplexity(rows: Sequence[Mapping], units: Sequence[str] = ()) -> dict:
    """Token-weighted loss (nats/token) and perplexity ``exp(loss)`` over all documents, and the
    same negative log-likelihood per tokenizer-independent unit.

    ``rows`` are ``{id, nll, n_tokens, n_bytes, n_characters, n_words}`` with ``nll`` the
    summed negative log-likelihood in nats; at least one token must be scored. ``units`` adds,
    per unit, the count and ``bits_per_byte`` / ``bits_per_character`` (Σ nll / Σ units / ln 2)
    or ``word_perplexity`` (exp(Σ nll / Σ words), lm-eval's wikitext convention). Unlike
    per-token figures these compare across tokenizers and languages.
    """
    n_tokens = sum(int(row["n_tokens"]) for row in rows)
    nll = sum(float(row["nll"]) for row in rows)
    loss = nll / n_tokens
    summary = {
        "n_documents": len(rows),
        "n_tokens": n_tokens,
        "loss": _round(loss),
        "perplexity": _round(math.exp(loss)),
    }
    for unit in units:
        count_field, summary_field, form = PERPLEXITY_UNITS[unit]
        count = sum(int(row[count_field]) for row in rows)
        summary[count_field] = count
        summary[summary_field] = _round(per_unit(nll / count, form)) if count else None
    summary["item_ids_sha256"] = item_ids_sha256([row["id"] for row in rows])
    return summary
