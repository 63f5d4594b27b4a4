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
    result["text_zh"] = headline_sentence(result["chinese"], result["english"], confidence, language="zh")
    return result


# The headline's wording per language; the numbers and their order are the same in both.
_WORDING = {
    "en": {
        "side": {"zh": "Chinese", "en": "English"},
        "accuracy": "{side} accuracy changed by {delta:+.1f} points ({confidence:.0%} CI {low:+.1f} to {high:+.1f}; {per})",
        "perplexity": "{side} perplexity by {change:+.1f}%{interval}",
        "interval": " (CI {low:+.1f}% to {high:+.1f}%)",
        "list": ", ",
        "join": " and ",
        "both": "After LoRA fine-tuning, {zh}, while {en}.",
        "one": "After LoRA fine-tuning, {text}.",
        "none": "The two evaluations share no accuracy or perplexity benchmark to compare.",
    },
    "zh": {
        "side": {"zh": "中文", "en": "英文"},
        "accuracy": "{side}准确率变化 {delta:+.1f} 个百分点（{confidence:.0%} 置信区间 {low:+.1f} 至 {high:+.1f}；{per}）",
        "perplexity": "{side}困惑度变化 {change:+.1f}%{interval}",
        "interval": "（置信区间 {low:+.1f}% 至 {high:+.1f}%）",
        "list": "，",
        "join": "，",
        "both": "LoRA 微调后，{zh}；同时{en}。",
        "one": "LoRA 微调后，{text}。",
        "none": "两次评测没有可比较的共同准确率或困惑度基准。",
    },
}


def _side_phrase(side: dict, side_key: str, confidence: float, language: str) -> str | None:
    words = _WORDING[language]
    name = words["side"][side_key]
    parts = []
    if side.get("benchmarks"):
        per = words["list"].join(f"{benchmark_label(n)} {v:+.1f}" for n, v in side["per_benchmark"].items())
        parts.append(words["accuracy"].format(
            side=name, delta=side["delta_points"], confidence=confidence,
            low=side["ci_low_points"], high=side["ci_high_points"], per=per,
        ))
    if side.get("perplexity_relative_change") is not None:
        interval = ""
        if side.get("perplexity_ci_low") is not None:
            interval = words["interval"].format(low=100 * side["perplexity_ci_low"], high=100 * side["perplexity_ci_high"])
        parts.append(words["perplexity"].format(side=name, change=100 * side["perplexity_relative_change"], interval=interval))
    return words["join"].join(parts) if parts else None


def headline_sentence(chinese: dict, english: dict, confidence: float, language: str = "en") -> str:
    """The one-sentence summary: Chinese gain, then English loss, each with its uncertainty.

    ``language`` is ``"en"`` or ``"zh"``; both say the same numbers in the same order.
    """
    words = _WORDING[language]
    zh = _side_phrase(chinese, "zh", confidence, language)
    en = _side_phrase(english, "en", confidence, language)
    if zh and en:
        return words["both"].format(zh=zh, en=en)
    if zh or en:
        return words["one"].format(text=zh or en)
    return words["none"]
