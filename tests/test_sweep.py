"""The LoRA sweep: grid, shards, shared steps, and the summary (synthetic results; no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.config import load_config
from zhlora.errors import ConfigError
from zhlora.experiment import (
    WorkLayout,
    parse_shard,
    plan_sweep,
    shard_trials,
    summarize_sweep,
    sweep_trials,
    tradeoff_numbers,
    write_sweep_summary,
)

REPO = Path(__file__).resolve().parents[1]


def test_seed_grid_has_36_distinct_trials_and_shards_partition_it():
    cfg = load_config(REPO / "configs" / "sweep-seed-grid.yaml")
    trials = sweep_trials(cfg)
    assert len(trials) == 36
    assert trials[0].name == "lora-chinese-llama-r4-a16-d0.05"
    assert {(t.lora_rank, t.lora_alpha, t.lora_dropout) for t in trials} == {
        (r, a, d) for r in (4, 8, 16, 32, 64, 128) for a in (16, 32, 64) for d in (0.05, 0.1)}
    shards = [shard_trials(trials, (i, 4)) for i in range(4)]
    assert sorted(t.index for shard in shards for t in shard) == list(range(36))
    assert {t.lora_rank for t in shards[0]} == {4, 8, 16, 32, 64, 128}  # every machine gets small and large ranks


@pytest.mark.parametrize("text", ["4/4", "1", "-1/2", "a/b", "0/0"])
def test_bad_shard_is_refused(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)


def test_duplicate_grid_values_are_refused(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.sweep.lora_ranks = [8, 8]
    with pytest.raises(ConfigError, match="twice"):
        sweep_trials(cfg)


def test_sweep_plan_shares_data_model_baseline_and_preprocessing(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.work_dir = str(tmp_path)
    cfg.sweep.lora_ranks, cfg.sweep.lora_alphas, cfg.sweep.lora_dropouts = [4, 8], [16], [0.05]
    cfg.sweep.replay_ratios = [0.0, 0.3]
    trials = sweep_trials(cfg)
    assert [t.name for t in trials] == ["lora-demo-r4-a16-d0.05", "lora-demo-r4-a16-d0.05-replay0.3",
                                        "lora-demo-r8-a16-d0.05", "lora-demo-r8-a16-d0.05-replay0.3"]
    _, steps, configs = plan_sweep(cfg, trials)
    ids = [s.id for s in steps]
    assert len(ids) == len(set(ids))
    assert ids.count("evaluate.baseline") == 1 and "download-data.alpaca" in ids
    assert {"preprocess", "preprocess.replay0.3"} <= set(ids)
    assert [c.lora.lora_rank for c in configs] == [4, 4, 8, 8]
    assert [c.data.replay_ratio for c in configs] == [0.0, 0.3, 0.0, 0.3]
    assert sum(i.startswith("train.") for i in ids) == 4


# ---------------------------------------------------------------------------------------
# Summary from synthetic forgetting.json files
# ---------------------------------------------------------------------------------------
def _forgetting(zh: float, en: float, ppl_zh: float) -> dict:
    side = lambda d: {"delta_points": d, "ci_low_points": d - 2, "ci_high_points": d + 2, "benchmarks": ["x"]}  # noqa: E731
    from zhlora.analysis.results_io import FORGETTING_SCHEMA_VERSION

    return {"schema_version": FORGETTING_SCHEMA_VERSION, "base": {}, "tuned": {}, "settings": {}, "statistics": {},
            "hypotheses": {}, "rows": [], "flipped": {},
            "headline": {"text": f"zh {zh} en {en}", "text_zh": f"中文 {zh} 英文 {en}", "chinese": side(zh),
                         "english": side(en)},
            "perplexity": [{"benchmark": "ppl_zh", "relative_change": ppl_zh}]}


def test_tradeoff_numbers_reads_the_headline_and_perplexity():
    numbers = tradeoff_numbers(_forgetting(3.0, -1.5, -0.2))
    assert numbers["zh_delta_points"] == 3.0 and numbers["en_ci_high_points"] == 0.5
    assert numbers["ppl_zh"] == -0.2 and numbers["ppl_en"] is None


def test_summary_merges_complete_trials_and_marks_the_pareto_front(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.work_dir = str(tmp_path)
    cfg.sweep.lora_ranks, cfg.sweep.lora_alphas, cfg.sweep.lora_dropouts = [4, 8], [16, 32], [0.05]
    layout = WorkLayout.of(cfg)
    made = {"lora-demo-r4-a16-d0.05": (2.0, -1.0), "lora-demo-r8-a16-d0.05": (4.0, -3.0), "lora-demo-r8-a32-d0.05": (1.0, -2.0)}
    for name, (zh, en) in made.items():
        layout.eval_dir(name).mkdir(parents=True)
        (layout.eval_dir(name) / "forgetting.json").write_text(json.dumps(_forgetting(zh, en, -0.1)), encoding="utf-8")
    layout.run_dir("lora-demo-r4-a32-d0.05").mkdir(parents=True)
    summary = summarize_sweep(cfg)
    status = {row["name"]: row["status"] for row in summary["trials"]}
    assert status == {"lora-demo-r4-a16-d0.05": "complete (unverified)", "lora-demo-r4-a32-d0.05": "training",
                      "lora-demo-r8-a16-d0.05": "complete (unverified)", "lora-demo-r8-a32-d0.05": "complete (unverified)"}
    html = write_sweep_summary(summary, layout.sweep_dir(cfg.run_name), language="en")
    text = html.read_text(encoding="utf-8")
    md = (html.parent / "summary.md").read_text(encoding="utf-8")
    assert "3 of 4 trials complete" in text
    # r8-a32 (+1 zh, 2 lost) is dominated by r4-a16 (+2 zh, 1 lost); the other two are on the front.
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| lora-demo-")}
    assert "★" in rows["lora-demo-r4-a16-d0.05"] and "★" in rows["lora-demo-r8-a16-d0.05"]
    assert "★" not in rows["lora-demo-r8-a32-d0.05"]
    assert (html.parent / "tradeoff.png").is_file()
    assert sorted(p.name for p in html.parent.glob("heatmap_*.png")) == ["heatmap_en_d0.05.png", "heatmap_zh_d0.05.png"]
    assert json.loads((html.parent / "summary.json").read_text(encoding="utf-8"))["trials"][1]["status"] == "training"


def test_summary_flags_trials_made_with_other_settings(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.work_dir = str(tmp_path)
    cfg.sweep.lora_ranks, cfg.sweep.lora_alphas, cfg.sweep.lora_dropouts = [4], [16], [0.05]
    layout = WorkLayout.of(cfg)
    name = "lora-demo-r4-a16-d0.05"
    layout.eval_dir(name).mkdir(parents=True)
    (layout.eval_dir(name) / "forgetting.json").write_text(json.dumps(_forgetting(1, -1, 0)), encoding="utf-8")
    layout.record_file(f"compare.{name}").parent.mkdir(parents=True)
    layout.record_file(f"compare.{name}").write_text(json.dumps({"fingerprint": "other", "status": "complete"}))
    assert summarize_sweep(cfg)["trials"][0]["status"] == "stale"


def test_adapter_scale_chart_draws_what_is_known(tmp_path):
    from zhlora.analysis.charts import plot_adapter_scale_curve

    rows = [{"scale": s, "zh_delta_points": 4 * s, "zh_ci_low_points": 4 * s - 1, "zh_ci_high_points": 4 * s + 1,
             "en_delta_points": None, "en_ci_low_points": None, "en_ci_high_points": None,
             "ppl_zh": -0.2 * s, "ppl_en": None} for s in (0.0, 0.5, 1.0)]
    out = plot_adapter_scale_curve(rows, tmp_path / "curve.png", language="en")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
