"""Chart and report wording in Chinese and English.

Charts draw Chinese only when a CJK font is installed (see :mod:`zhlora.analysis.fonts`);
everything a chart writes therefore goes through :func:`text` or :func:`category_label` /
:func:`subject_label`, which never return Chinese for the English language.
"""

from __future__ import annotations

from zhlora.data.benchmarks import BENCHMARKS

# Fixed wording: key -> (English, Chinese). Format fields are filled by the caller.
_TEXT = {
    "accuracy_pct": ("Accuracy (%)", "准确率（%）"),
    "benchmark_accuracy": ("Accuracy per benchmark", "各基准准确率"),
    "category_accuracy": ("{benchmark}: accuracy by category (%)", "{benchmark}：各类别准确率（%）"),
    "subject_accuracy": ("{benchmark}: accuracy by subject (%)", "{benchmark}：各科目准确率（%）"),
    "chance": ("chance (25%)", "随机水平（25%）"),
    "step": ("Optimizer step", "优化步数"),
    "loss": ("Training loss", "训练损失"),
    "learning_rate": ("Learning rate", "学习率"),
    "loss_title": ("Training loss", "训练损失曲线"),
    "probe_title": (
        "Probes during training: learning (zh) and forgetting (en)",
        "训练过程探针：学习（中文）与遗忘（英文）",
    ),
    "budget_limit": ("forgetting budget", "遗忘预算上限"),
    "exported_step": ("exported step {step}", "导出第 {step} 步"),
    "chinese_radar": ("Chinese benchmarks: accuracy by category (%)", "中文基准：各类别准确率（%）"),
    "english_radar": ("English benchmarks: accuracy by category (%)", "英文基准：各类别准确率（%）"),
    "change_title": (
        "Change after LoRA (points, {confidence:.0%} CI)",
        "LoRA 后的变化（百分点，{confidence:.0%} 置信区间）",
    ),
    "change_axis": ("Tuned − base (accuracy points)", "微调后 − 基线（准确率百分点）"),
    "base": ("base", "基线"),
    "tuned": ("tuned", "微调后"),
    "improved": ("improved", "提升"),
    "forgot": ("forgot", "遗忘"),
    "no significant change": ("no significant change", "无显著变化"),
    "tradeoff_title": ("Learning vs forgetting", "学习与遗忘的权衡"),
    "learning_axis": ("Chinese gain (points)", "中文提升（百分点）"),
    "forgetting_axis": ("English loss (points)", "英文损失（百分点）"),
    "pareto": ("Pareto front", "帕累托前沿"),
    "learning_bpb_axis": ("Chinese learning: drop of zh bits per byte (%)", "中文学习：中文每字节比特数下降（%）"),
    "forgetting_bpb_axis": ("English forgetting: rise of en bits per byte (%)", "英文遗忘：英文每字节比特数上升（%）"),
    "trajectory_title": ("Learning vs forgetting during training", "训练过程中的学习与遗忘"),
    "budget_band": ("beyond the forgetting budget", "超出遗忘预算"),
    "final_evaluation": ("final evaluation", "最终评测"),
    "median": ("median over layers", "各层中位数"),
    "maximum": ("maximum", "最大值"),
    "rank90_title": ("Rank holding 90% of ‖ΔW‖²", "占 ‖ΔW‖² 90% 所需的秩"),
    "relative_norm_title": ("‖ΔW‖ / ‖W‖ (mean over layers)", "‖ΔW‖ / ‖W‖（各层平均）"),
    "scale_axis": (
        "Adapter scale (0 = base model, 1 = trained adapter)",
        "适配器缩放（0 = 基座模型，1 = 训练所得适配器）",
    ),
    "scale_accuracy_title": ("Accuracy change vs base (points, CI)", "相对基座的准确率变化（百分点，置信区间）"),
    "scale_perplexity_title": ("Perplexity per token, change vs base (%)", "相对基座的每词元困惑度变化（%）"),
    "scale_bits_title": ("Bits per byte, change vs base (%)", "相对基座的每字节比特数变化（%）"),
    "chinese": ("Chinese", "中文"),
    "english": ("English", "英文"),
}

CATEGORY_ZH = {
    "STEM": "理工",
    "stem": "理工",
    "Social Science": "社会科学",
    "social sciences": "社会科学",
    "social_sciences": "社会科学",
    "Humanities": "人文",
    "humanities": "人文",
    "Other": "其他",
    "other": "其他",
    "other (business, health, misc.)": "其他",
    "China specific": "中国特定",
}

_CATEGORY_EN = {
    "理工": "STEM",
    "社会科学": "Social Science",
    "人文": "Humanities",
    "其他": "Other",
    "中国特定": "China specific",
}


def has_cjk(value: str) -> bool:
    """Whether ``value`` contains a CJK character (which DejaVu Sans cannot draw)."""
    return any("\u2e80" <= char <= "\u9fff" or "\uf900" <= char <= "\uffef" for char in value)


def text(key: str, language: str, **fields: object) -> str:
    """The fixed wording ``key`` in ``language`` ("en" or "zh"), formatted with ``fields``."""
    english, chinese = _TEXT[key]
    return (chinese if language == "zh" else english).format(**fields)


def benchmark_label(name: str, language: str = "en") -> str:
    """Display name of a benchmark from the registry ("ppl_zh" -> "PPL (zh)", in Chinese "中文困惑度");
    unknown names pass through."""
    bench = BENCHMARKS.get(name)
    if bench is None:
        return name
    return bench.display_zh if language == "zh" else bench.display_en


def category_label(category: str, language: str) -> str:
    """A category's display name: Chinese when known and asked for, never CJK for English."""
    if language == "zh":
        return CATEGORY_ZH.get(category, category)
    if has_cjk(category):
        return _CATEGORY_EN.get(category, "?")
    return category


def subject_label(subject: str, name_zh: str | None, language: str) -> str:
    """A subject's display name: its Chinese name for zh, the spaced handle for en."""
    if language == "zh" and name_zh:
        return name_zh
    return subject.replace("_", " ") if not has_cjk(subject) else "?"


def safe_label(value: str, language: str, fallback: str) -> str:
    """``value`` unless it holds CJK text that the English charts cannot draw; then ``fallback``."""
    return fallback if language != "zh" and has_cjk(value) else value
