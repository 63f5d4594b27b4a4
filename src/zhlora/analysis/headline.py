"""The one-sentence headline: Chinese gain vs English loss, each with its uncertainty, and which
benchmarks had too few items to see a change of a few points."""

from __future__ import annotations

from zhlora.analysis import stats
from zhlora.analysis.labels import benchmark_label

HEADLINE_SIDES = {"zh": ("ceval", "cmmlu"), "en": ("mmlu", "gsm8k")}
PERPLEXITY_OF_SIDE = {"zh": "ppl_zh", "en": "ppl_en"}
# "A few points": a benchmark whose detectable change (80% power) is larger is called too small to detect.
DETECTABLE_POINTS = 5.0


def _perplexity_entry(ppl: dict | None) -> dict:
    """The side's perplexity figure: bits per byte when the results have it (tokenizer-independent,
    comparable across languages and models), else the per-token perplexity."""
    if ppl is None:
        return {"perplexity_relative_change": None, "perplexity_ci_low": None, "perplexity_ci_high": None,
                "perplexity_unit": None, "bits_per_byte": None, "perplexity_resolved": None, "n_documents": None}
    bpb = (ppl.get("units") or {}).get("bits_per_byte")
    return {
        "perplexity_relative_change": ppl["relative_change"],
        "perplexity_ci_low": ppl["ci_low"],
        "perplexity_ci_high": ppl["ci_high"],
        "perplexity_unit": "bits per byte" if bpb else "perplexity per token",
        "bits_per_byte": {key: bpb[key] for key in ("base", "tuned", "relative_change", "ci_low", "ci_high")} if bpb else None,
        "perplexity_resolved": ppl.get("resolved", True),
        "n_documents": ppl["n_documents"],
    }


def headline(benchmark_rows: dict[str, dict], perplexity: dict[str, dict], *, confidence: float) -> dict:
    """Chinese gain vs English loss: each side's mean change over its benchmarks, with a CI.

    ``benchmark_rows`` are the benchmark-level comparison rows by name (with their Tango
    intervals and detectable changes). A side's change is the unweighted mean of its benchmarks'
    changes (C-Eval and CMMLU count equally, MMLU and GSM8K count equally); its CI combines the
    benchmarks' intervals by MOVER (:func:`~zhlora.analysis.stats.combined_mean_interval`), so
    it never collapses to a point. ``undetectable`` lists benchmarks whose n cannot detect a
    change of :data:`DETECTABLE_POINTS` points.
    """
    result: dict = {}
    for side, names in HEADLINE_SIDES.items():
        present = [name for name in names if name in benchmark_rows]
        entry: dict = {"benchmarks": present}
        if present:
            rows = [benchmark_rows[n] for n in present]
            low, high = stats.combined_mean_interval(
                [r["delta_points"] for r in rows], [(r["ci_low_points"], r["ci_high_points"]) for r in rows]
            )
            entry.update(
                delta_points=sum(r["delta_points"] for r in rows) / len(rows),
                ci_low_points=low,
                ci_high_points=high,
                per_benchmark={n: benchmark_rows[n]["delta_points"] for n in present},
            )
        entry.update(_perplexity_entry(perplexity.get(PERPLEXITY_OF_SIDE[side])))
        result["chinese" if side == "zh" else "english"] = entry
    result["undetectable"] = [
        {"benchmark": name, "n": row["n"], "detectable_points": row["detectable_points"]}
        for name, row in benchmark_rows.items()
        if row.get("detectable_points", 0.0) > DETECTABLE_POINTS
    ]
    result["text"] = headline_sentence(result, confidence)
    result["text_zh"] = headline_sentence(result, confidence, language="zh")
    return result


# The headline's wording per language; the numbers and their order are the same in both.
_WORDING = {
    "en": {
        "side": {"zh": "Chinese", "en": "English"},
        "accuracy": "{side} accuracy changed by {delta:+.1f} points ({confidence:.0%} CI {low:+.1f} to {high:+.1f}; {per})",
        "bits": "{side} bits per byte by {change:+.1f}% ({base:.3f} → {tuned:.3f}{interval})",
        "perplexity": "{side} perplexity per token by {change:+.1f}%{interval}",
        "interval": " (CI {low:+.1f}% to {high:+.1f}%)",
        "bits_interval": "; CI {low:+.1f}% to {high:+.1f}%",
        "unresolved": " (not resolved: {n} documents, an interval needs {needed})",
        "bits_unresolved": "; not resolved: {n} documents, an interval needs {needed}",
        "list": ", ",
        "join": " and ",
        "both": "After LoRA fine-tuning, {zh}, while {en}.",
        "one": "After LoRA fine-tuning, {text}.",
        "none": "The two evaluations share no accuracy or perplexity benchmark to compare.",
        "undetectable": " Too few items to detect a change of {points:g} points: {items}.",
        "undetectable_item": "{name} (n = {n}: changes smaller than ±{mde:.0f} points would go unseen)",
    },
    "zh": {
        "side": {"zh": "中文", "en": "英文"},
        "accuracy": "{side}准确率变化 {delta:+.1f} 个百分点（{confidence:.0%} 置信区间 {low:+.1f} 至 {high:+.1f}；{per}）",
        "bits": "{side}每字节比特数变化 {change:+.1f}%（{base:.3f} → {tuned:.3f}{interval}）",
        "perplexity": "{side}每词元困惑度变化 {change:+.1f}%{interval}",
        "interval": "（置信区间 {low:+.1f}% 至 {high:+.1f}%）",
        "bits_interval": "；置信区间 {low:+.1f}% 至 {high:+.1f}%",
        "unresolved": "（无法给出区间：仅 {n} 篇文档，至少需要 {needed} 篇）",
        "bits_unresolved": "；无法给出区间：仅 {n} 篇文档，至少需要 {needed} 篇",
        "list": "，",
        "join": "，",
        "both": "LoRA 微调后，{zh}；同时{en}。",
        "one": "LoRA 微调后，{text}。",
        "none": "两次评测没有可比较的共同准确率或困惑度基准。",
        "undetectable": "题目太少，无法检出 {points:g} 个百分点的变化：{items}。",
        "undetectable_item": "{name}（n = {n}：小于 ±{mde:.0f} 个百分点的变化检测不到）",
    },
}


def _perplexity_phrase(side: dict, name: str, words: dict) -> str:
    bpb = side.get("bits_per_byte")
    unresolved = side.get("perplexity_resolved") is False
    if bpb:
        if unresolved:
            interval = words["bits_unresolved"].format(n=side["n_documents"], needed=stats.MIN_DOCUMENTS)
        elif bpb.get("ci_low") is not None:
            interval = words["bits_interval"].format(low=100 * bpb["ci_low"], high=100 * bpb["ci_high"])
        else:
            interval = ""
        return words["bits"].format(side=name, change=100 * bpb["relative_change"], base=bpb["base"],
                                    tuned=bpb["tuned"], interval=interval)
    if unresolved:
        interval = words["unresolved"].format(n=side["n_documents"], needed=stats.MIN_DOCUMENTS)
    elif side.get("perplexity_ci_low") is not None:
        interval = words["interval"].format(low=100 * side["perplexity_ci_low"], high=100 * side["perplexity_ci_high"])
    else:
        interval = ""
    return words["perplexity"].format(side=name, change=100 * side["perplexity_relative_change"], interval=interval)


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
        parts.append(_perplexity_phrase(side, name, words))
    return words["join"].join(parts) if parts else None


def headline_sentence(result: dict, confidence: float, language: str = "en") -> str:
    """The summary: Chinese gain, then English loss, each with its uncertainty, then the benchmarks
    too small to detect a change of a few points.

    ``result`` holds the ``chinese`` and ``english`` side entries and ``undetectable``;
    ``language`` is ``"en"`` or ``"zh"``; both say the same numbers in the same order.
    """
    words = _WORDING[language]
    zh = _side_phrase(result["chinese"], "zh", confidence, language)
    en = _side_phrase(result["english"], "en", confidence, language)
    if zh and en:
        text = words["both"].format(zh=zh, en=en)
    elif zh or en:
        text = words["one"].format(text=zh or en)
    else:
        return words["none"]
    if result.get("undetectable"):
        items = words["list"].join(
            words["undetectable_item"].format(name=benchmark_label(u["benchmark"]), n=u["n"], mde=u["detectable_points"])
            for u in result["undetectable"]
        )
        text += words["undetectable"].format(points=DETECTABLE_POINTS, items=items)
    return text
