"""A two-trial ``zhlora sweep`` on the tiny model, split into two shards that share one work folder."""

from __future__ import annotations

import json

from zhlora.cli import main

FAST = ["--lora_ranks", "4,8", "--lora_alphas", "16", "--lora_dropouts", "0.05", "--max_steps", "2",
        "--save_steps", "2", "--limit", "1", "--benchmarks", "ceval,mmlu,ppl_zh,ppl_en", "--bootstrap_samples", "200"]


def test_two_shards_share_the_baseline_and_the_summary_merges_them(tmp_path, capsys):
    work = tmp_path / "work"
    baseline_record = work / ".zhlora" / "steps" / "evaluate.baseline.json"

    assert main(["sweep", "--work_dir", str(work), *FAST, "--shard", "0/2"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 trials complete" in out and "lora-demo-r4-a16-d0.05" in out
    first_baseline = json.loads(baseline_record.read_text(encoding="utf-8"))
    assert not (work / "results" / "lora-demo-r8-a16-d0.05").exists()

    assert main(["sweep", "--work_dir", str(work), *FAST, "--shard", "1/2"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 trials complete" in out
    assert json.loads(baseline_record.read_text(encoding="utf-8")) == first_baseline  # evaluated once, shared

    summary_dir = work / "sweeps" / "lora-demo"
    summary = json.loads((summary_dir / "summary.json").read_text(encoding="utf-8"))
    assert [row["status"] for row in summary["trials"]] == ["complete", "complete"]
    assert all(row["ppl_zh"] is not None for row in summary["trials"])
    html = (summary_dir / "report.html").read_text(encoding="utf-8")
    assert "lora-demo-r8-a16-d0.05" in html and "data:image/png;base64" in html
    assert (summary_dir / "tradeoff.png").is_file() and (summary_dir / "heatmap_zh_d0.05.png").is_file()

    assert main(["sweep", "--work_dir", str(work), *FAST, "--summary_only"]) == 0
    assert "2 of 2 trials complete" in capsys.readouterr().out
