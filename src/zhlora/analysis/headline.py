"""The one-sentence headline: Chinese gain vs English loss, each with its uncertainty."""

from __future__ import annotations

import numpy as np

from zhlora.analysis import stats
from zhlora.analysis.labels import benchmark_label
from zhlora.analysis.pairing import PairedItems

HEADLINE_SIDES = {"zh": ("ceval", "cmmlu"), "en": ("mmlu", "gsm8k")}
PERPLEXITY_OF_SIDE = {"zh": "ppl_zh", "en": "ppl_en"}


def headline(
    paired_by_benchmark: dict[str, PairedItems],
    perplexity: dict[str, dict],
    *,
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> dict:
    """Chinese gain vs English loss: each side's mean change over its benchmarks, with a CI.

    A side's change is the unweighted mean of its benchmarks' changes (C-Eval and CMMLU count
    equally, MMLU and GSM8K count equally). Its CI comes from a stratified paired bootstrap:
    each benchmark's items are resampled on their own and the replicate means are averaged.
    """
    result: dict = {}
    for side, names in HEADLINE_SIDES.items():
        present = [name for name in names if name in paired_by_benchmark]
        entry: dict = {"benchmarks": present}
        if present:
            counts = {
                n: stats.paired_counts(paired_by_benchmark[n].base_correct, paired_by_benchmark[n].tuned_correct)
                for n in present
            }
            replicates = np.mean(
                [
                    stats.bootstrap_delta_samples(counts[n], bootstrap_samples, stats.stable_rng(seed, f"headline/{n}"))
                    for n in present
                ],
                axis=0,
            )
            low, high = stats.percentile_interval(replicates, confidence)
            entry.update(
                delta_points=float(np.mean([counts[n].delta_points for n in present])),
                ci_low_points=low,
                ci_high_points=high,
                per_benchmark={n: counts[n].delta_points for n in present},
            )
        ppl = perplexity.get(PERPLEXITY_OF_SIDE[side])
        entry["perplexity_relative_change"] = ppl["relative_change"] if ppl else None
        entry["perplexity_ci_low"] = ppl["ci_low"] if ppl else None
        entry["perplexity_ci_high"] = ppl["ci_high"] if ppl else None
        result["chinese" if side == "zh" else "english"] = entry
    result["text"] = headline_sentence(result["chinese"], result["english"], confidence)
    result["text_zh"] = headline_sentence_zh(result["chinese"], result["english"], confidence)
    return result


def _side_phrase(side: dict, language_name: str, confidence: float) -> str | None:
    parts = []
    if side.get("benchmarks"):
        per = ", ".join(f"{benchmark_label(n)} {v:+.1f}" for n, v in side["per_benchmark"].items())
        parts.append(
            f"{language_name} accuracy changed by {side['delta_points']:+.1f} points "
            f"({confidence:.0%} CI {side['ci_low_points']:+.1f} to {side['ci_high_points']:+.1f}; {per})"
        )
    if side.get("perplexity_relative_change") is not None:
        interval = ""
        if side.get("perplexity_ci_low") is not None:
            interval = f" (CI {100 * side['perplexity_ci_low']:+.1f}% to {100 * side['perplexity_ci_high']:+.1f}%)"
        parts.append(f"{language_name} perplexity by {100 * side['perplexity_relative_change']:+.1f}%{interval}")
    return " and ".join(parts) if parts else None


def headline_sentence(chinese: dict, english: dict, confidence: float) -> str:
    """The one-sentence summary: Chinese gain, then English loss, each with its uncertainty."""
    zh = _side_phrase(chinese, "Chinese", confidence)
    en = _side_phrase(english, "English", confidence)
    if zh and en:
        return f"After LoRA fine-tuning, {zh}, while {en}."
    if zh or en:
        return f"After LoRA fine-tuning, {zh or en}."
    return "The two evaluations share no accuracy or perplexity benchmark to compare."


def _side_phrase_zh(side: dict, language_name: str, confidence: float) -> str | None:
    parts = []
    if side.get("benchmarks"):
        per = "，".join(f"{benchmark_label(n)} {v:+.1f}" for n, v in side["per_benchmark"].items())
        parts.append(
            f"{language_name}准确率变化 {side['delta_points']:+.1f} 个百分点"
            f"（{confidence:.0%} 置信区间 {side['ci_low_points']:+.1f} 至 {side['ci_high_points']:+.1f}；{per}）"
        )
    if side.get("perplexity_relative_change") is not None:
        interval = ""
        if side.get("perplexity_ci_low") is not None:
            interval = f"（置信区间 {100 * side['perplexity_ci_low']:+.1f}% 至 {100 * side['perplexity_ci_high']:+.1f}%）"
        parts.append(f"{language_name}困惑度变化 {100 * side['perplexity_relative_change']:+.1f}%{interval}")
    return "，".join(parts) if parts else None


def headline_sentence_zh(chinese: dict, english: dict, confidence: float) -> str:
    """The same summary as :func:`headline_sentence`, in Chinese (same numbers, same order)."""
    zh = _side_phrase_zh(chinese, "中文", confidence)
    en = _side_phrase_zh(english, "英文", confidence)
    if zh and en:
        return f"LoRA 微调后，{zh}；同时{en}。"
    if zh or en:
        return f"LoRA 微调后，{zh or en}。"
    return "两次评测没有可比较的共同准确率或困惑度基准。"
