"""The experiment's two hypotheses, answered from the comparison rows.

- **H1** (LoRA improves the model's Chinese): a *superiority* question. The Chinese rows
  (C-Eval, CMMLU accuracy; the held-out Chinese loss) form one family, Holm-corrected; a row is
  "improved, shown" when its adjusted p is below the significance level and the change is a gain.
  H1 is supported when at least one Chinese row improved and none got worse.
- **H2** (an appropriately configured LoRA avoids catastrophic forgetting): a *non-inferiority*
  question against the forgetting budget (``--forgetting_budget``, default
  :data:`~zhlora.forgetting_budget.DEFAULT_FORGETTING_BUDGET`). Each English row (MMLU, GSM8K
  accuracy; English perplexity and bits per byte) is "within budget, shown" when the worst end of
  its CI is inside the margin, "forgot beyond budget, shown" when the whole CI is past it, else
  "inconclusive" with the items that would have decided it. H2 is an intersection–union test:
  it holds only when every budgeted English row is within budget, and each row's test at level
  α then gives the whole claim level α with no correction (Berger 1982).

Formulas and references: docs/analysis.md, "Verdicts". Reads rows only; computes nothing twice.
"""

from __future__ import annotations

import math

from zhlora.analysis import stats
from zhlora.analysis.labels import benchmark_label
from zhlora.forgetting_budget import ForgettingBudget

ROW_VERDICTS = {
    "within": ("forgetting within budget, shown", "遗忘在预算之内（已证明）"),
    "beyond": ("forgot beyond budget, shown", "遗忘超出预算（已证明）"),
    "inconclusive": ("inconclusive", "无定论"),
    "improved": ("improved, shown", "提升（已证明）"),
    "worse": ("worse, shown", "变差（已证明）"),
    "no change shown": ("no change shown", "未证明有变化"),
}


def _limit(budget: ForgettingBudget, metric: str) -> float | None:
    return next((limit.limit for limit in budget.limits if limit.metric == metric), None)


def english_accuracy_verdict(row: dict, margin_points: float, confidence: float) -> dict:
    """Non-inferiority of one English accuracy row: tuned − base > −margin (points)."""
    counts = stats.PairedCounts(a=0, b=row["right_to_wrong"], c=row["wrong_to_right"],
                                d=row["n"] - row["right_to_wrong"] - row["wrong_to_right"])
    outcome = stats.margin_verdict(-row["ci_high_points"], -row["ci_low_points"], margin_points)
    verdict = {"test": "non-inferiority", "margin": margin_points, "margin_unit": "points",
               "outcome": outcome, "p_noninferiority": stats.tango_noninferiority_p(counts, margin_points)}
    if outcome == "inconclusive":
        verdict["items_needed"] = stats.noninferiority_items_needed(
            row["delta_points"] / 100.0, (counts.b + counts.c) / counts.n, margin_points / 100.0, confidence)
    return verdict


def english_perplexity_verdicts(row: dict, margin: float, confidence: float) -> dict[str, dict]:
    """Non-inferiority of the English loss: perplexity may rise by at most ``margin`` (0.05 = 5%).

    The bits-per-byte row is the same test on the same document losses, its margin the same rise
    of the summed loss written in bits per byte: log2(1 + margin) x tokens / bytes.
    """
    verdicts = {}
    resolved = row.get("resolved", True) and row.get("ci_low") is not None
    outcome = stats.margin_verdict(row["ci_low"], row["ci_high"], margin) if resolved else "inconclusive"
    verdict = {"test": "non-inferiority", "margin": margin, "margin_unit": "relative perplexity rise", "outcome": outcome}
    if outcome == "inconclusive":
        verdict["documents_needed"] = (
            stats.documents_needed(row["n_documents"], row["relative_change"], row["ci_low"], row["ci_high"], margin,
                                   confidence)
            if resolved else None)
        if not resolved:
            verdict["why"] = f"fewer than {stats.MIN_DOCUMENTS} documents: no interval"
    verdicts["perplexity"] = verdict
    bpb = (row.get("units") or {}).get("bits_per_byte")
    if bpb is not None:
        bpb_margin = math.log2(1.0 + margin) * row["n_tokens"] / bpb["count"]
        bpb_resolved = resolved and bpb.get("delta_ci_low") is not None
        bpb_outcome = (stats.margin_verdict(bpb["delta_ci_low"], bpb["delta_ci_high"], bpb_margin)
                       if bpb_resolved else "inconclusive")
        verdicts["bits_per_byte"] = {"test": "non-inferiority", "margin": bpb_margin, "margin_unit": "bits per byte",
                                     "outcome": bpb_outcome, **({"documents_needed": verdict.get("documents_needed")}
                                                                if bpb_outcome == "inconclusive" else {})}
    return verdicts


def chinese_family(rows: list[dict], perplexity: list[dict], significance: float) -> list[dict]:
    """The superiority family of H1: Chinese benchmark accuracy rows and Chinese loss rows, Holm-corrected.

    Each member: ``{"row": name, "kind": "accuracy"|"loss", "change", "p", "p_holm", "outcome"}``;
    a gain is a rise in accuracy or a fall in loss.
    """
    members = [{"row": r["benchmark"], "kind": "accuracy", "change": r["delta_points"], "p": r["p_value"],
                "gain": r["delta_points"] > 0}
               for r in rows if r["level"] == "benchmark" and r["language"] == "zh"]
    members += [{"row": p["benchmark"], "kind": "loss", "change": p["relative_change"], "p": p["p_value"],
                 "gain": p["relative_change"] < 0}
                for p in perplexity if p["language"] == "zh" and p.get("p_value") is not None]
    for member, adjusted in zip(members, stats.holm_adjust([m["p"] for m in members]), strict=True):
        member["p_holm"] = adjusted
        significant = adjusted < significance
        member["outcome"] = ("improved" if member["gain"] else "worse") if significant else "no change shown"
    return members


def _h1(members: list[dict], significance: float) -> dict:
    improved = [m["row"] for m in members if m["outcome"] == "improved"]
    worse = [m["row"] for m in members if m["outcome"] == "worse"]
    if improved and not worse:
        verdict, zh = "supported", "成立"
    elif worse and not improved:
        verdict, zh = "contradicted", "不成立（中文变差）"
    elif improved and worse:
        verdict, zh = "mixed", "结果不一"
    else:
        verdict, zh = "inconclusive", "无定论"
    parts = [f"{benchmark_label(m['row'])} {_change_text(m)} (Holm p={m['p_holm']:.2g})" for m in members]
    evidence = ("; ".join(parts) or "no Chinese rows") + f"; significance {significance:g}."
    return {"verdict": verdict, "verdict_zh": zh, "evidence": evidence, "rows": [m["row"] for m in members],
            "improved": improved, "worse": worse}


def _change_text(member: dict) -> str:
    if member["kind"] == "accuracy":
        return f"{member['change']:+.1f} points"
    return f"perplexity {100 * member['change']:+.1f}%"


def _h2(english: list[dict], budget: ForgettingBudget) -> dict:
    budgeted = [e for e in english if e["verdict"] is not None]
    beyond = [e["name"] for e in budgeted if e["verdict"]["outcome"] == "beyond"]
    open_rows = [e["name"] for e in budgeted if e["verdict"]["outcome"] == "inconclusive"]
    if not budgeted:
        verdict, zh = "inconclusive", "无定论"
    elif beyond:
        verdict, zh = "rejected", "不成立（遗忘超出预算）"
    elif open_rows:
        verdict, zh = "inconclusive", "无定论"
    else:
        verdict, zh = "supported", "成立"
    parts = []
    for entry in budgeted:
        needed = entry["verdict"].get("items_needed") or entry["verdict"].get("documents_needed")
        unit = "items" if "items_needed" in entry["verdict"] else "documents"
        tail = f", ~{needed} {unit} would decide it" if entry["verdict"]["outcome"] == "inconclusive" and needed else ""
        parts.append(f"{entry['label']}: {ROW_VERDICTS[entry['verdict']['outcome']][0]}{tail}")
    evidence = f"budget {budget.text}: " + ("; ".join(parts) if parts else "no English row has a margin in this budget") + "."
    return {"verdict": verdict, "verdict_zh": zh, "evidence": evidence, "rows": [e["name"] for e in budgeted],
            "beyond": beyond, "inconclusive": open_rows, "rule": "intersection-union: every budgeted English row within budget"}


def hypotheses(rows: list[dict], perplexity: list[dict], budget: ForgettingBudget, *, confidence: float,
               significance: float) -> dict:
    """``{"H1": ..., "H2": ..., "english": [...], "chinese": [...]}`` and per-row verdicts.

    Adds ``margin_verdict`` to each English benchmark-level accuracy row and to each English
    perplexity row (``margin_verdicts``: perplexity and bits per byte), ``superiority`` to each
    Chinese row, in place, so forgetting.json carries them beside the numbers.
    """
    accuracy_margin, ppl_margin = _limit(budget, "acc"), _limit(budget, "ppl")
    english = []
    for row in rows:
        if row["level"] != "benchmark" or row["language"] != "en":
            continue
        row["margin_verdict"] = (english_accuracy_verdict(row, accuracy_margin, confidence)
                                 if accuracy_margin is not None else None)
        english.append({"name": row["benchmark"], "label": f"{benchmark_label(row['benchmark'])} accuracy",
                        "verdict": row["margin_verdict"]})
    for row in perplexity:
        if row["language"] != "en":
            continue
        row["margin_verdicts"] = english_perplexity_verdicts(row, ppl_margin, confidence) if ppl_margin is not None else {}
        for unit, verdict in row["margin_verdicts"].items():
            label = "bits per byte" if unit == "bits_per_byte" else "perplexity"
            english.append({"name": f"{row['benchmark']}.{unit}", "label": f"{benchmark_label(row['benchmark'])} {label}",
                            "verdict": verdict})
        if ppl_margin is None:
            english.append({"name": row["benchmark"], "label": benchmark_label(row["benchmark"]), "verdict": None})
    chinese = chinese_family(rows, perplexity, significance)
    for member in chinese:
        target = next((r for r in rows if r["level"] == "benchmark" and r["benchmark"] == member["row"]), None)
        if target is None:
            target = next(p for p in perplexity if p["benchmark"] == member["row"])
        target["superiority"] = {key: member[key] for key in ("p_holm", "outcome")}
    h1, h2 = _h1(chinese, significance), _h2(english, budget)
    return {
        "H1": {**h1, "claim": "LoRA fine-tuning on BELLE improves the model's Chinese",
               "claim_zh": "在 BELLE 上做 LoRA 微调能提升模型的中文能力"},
        "H2": {**h2, "claim": "this LoRA avoided catastrophic forgetting of English (within the budget)",
               "claim_zh": "该 LoRA 避免了英文能力的灾难性遗忘（在遗忘预算之内）"},
        "budget": budget.text,
    }


def verdict_lines(hypotheses_entry: dict) -> tuple[str, str]:
    """The two short lines that open the report and end ``zhlora run`` / ``zhlora compare``: 中文, English."""
    h1, h2 = hypotheses_entry["H1"], hypotheses_entry["H2"]
    zh = f"H1（中文提升）：{h1['verdict_zh']}。H2（英文遗忘在预算 {hypotheses_entry['budget']} 之内）：{h2['verdict_zh']}。"
    en = (f"H1 (Chinese improved): {h1['verdict']}. H2 (English forgetting within budget "
          f"{hypotheses_entry['budget']}): {h2['verdict']}.")
    return zh, en


def row_verdict(row: dict) -> str:
    """A benchmark row's verdict in words: the budget's for English rows, superiority for Chinese ones."""
    margin = row.get("margin_verdict")
    if margin:
        needed = f" (~{margin['items_needed']} items would decide it)" if margin.get("items_needed") else ""
        return f"{ROW_VERDICTS[margin['outcome']][0]} vs -{margin['margin']:g} points{needed}"
    if row.get("superiority"):
        return ROW_VERDICTS[row["superiority"]["outcome"]][0]
    return row["verdict"]
