"""``zhlora run`` and ``zhlora sweep`` end to end on the demo config with tiny limits.

One work folder for the module: a run with a three-scale adapter curve, its skip and redo
behaviour, then a two-trial sweep split into two shards that reuses the run's shared steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest

from zhlora.cli import main
from zhlora.experiment import runs_overview

# Fewer steps, items and tokens than the demo; everything else is configs/demo.yaml.
FAST = ["--max_steps", "4", "--save_steps", "2", "--limit", "1", "--gsm8k_limit", "1", "--ppl_zh_documents", "2",
        "--ppl_en_documents", "1", "--shots", "0", "--max_new_tokens", "16", "--bootstrap_samples", "200"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One full run with three adapter scales; returns (work folder, stdout)."""
    work = tmp_path_factory.mktemp("e2e") / "work"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["run", "--work_dir", str(work), *FAST, "--adapter_scales", "0,0.5,1"])
    assert status == 0, out.getvalue()
    return work, out.getvalue()


def test_run_writes_the_seed_layout_and_prints_the_headline(first_run):
    work, stdout = first_run
    assert (work / "data" / "manifest.json").is_file()
    assert (work / "models" / "base_model" / "zhlora_manifest.json").is_file()
    assert (work / "processed_data" / "train_dataset").is_dir()
    assert (work / "results" / "lora-demo" / "adapter_model.safetensors").is_file()
    for name in ("baseline", "lora-demo", "lora-demo-scale0", "lora-demo-scale0.5"):
        assert (work / "evaluation_results" / name / "results.json").is_file(), name
    report = work / "evaluation_results" / "lora-demo" / "report.html"
    forgetting = json.loads((work / "evaluation_results" / "lora-demo" / "forgetting.json").read_text(encoding="utf-8"))
    assert stdout.count(forgetting["headline"]["text"]) == 1  # printed once, at the end (issue 13)
    assert f"Report: {report}" in stdout
    assert "Adapter scale" in report.read_text(encoding="utf-8")
    config = (work / ".zhlora" / "configs" / "lora-demo.yaml").read_text(encoding="utf-8")
    assert "max_steps: 4" in config and str(work / "data") in config
    records = [json.loads(p.read_text(encoding="utf-8")) for p in (work / ".zhlora" / "steps").glob("*.json")]
    assert len(records) == 17 and all(r["status"] == "complete" for r in records)
    assert not list((work / ".zhlora" / "locks").glob("*.lock"))
    baseline = json.loads((work / "evaluation_results" / "baseline" / "results.json").read_text(encoding="utf-8"))
    sizes = {key: baseline["settings"][key] for key in ("limit", "gsm8k_limit", "ppl_zh_documents", "ppl_en_documents")}
    assert sizes == {"limit": 1, "gsm8k_limit": 1, "ppl_zh_documents": 2, "ppl_en_documents": 1}  # set independently
    benchmarks = baseline["benchmarks"]
    assert (benchmarks["gsm8k"]["n"], benchmarks["ppl_zh"]["n_documents"], benchmarks["ppl_en"]["n_documents"]) == (1, 2, 1)
    assert benchmarks["mmlu"]["n"] == len(benchmarks["mmlu"]["subjects"])  # one item per subject


def test_scale_zero_is_the_base_model(first_run):
    """The curve's anchor: at scale 0 the adapter is off, so every prediction equals the baseline's."""
    work, _ = first_run
    rows = json.loads((work / "evaluation_results" / "lora-demo" / "adapter_scales.json").read_text(encoding="utf-8"))["rows"]
    assert [row["scale"] for row in rows] == [0.0, 0.5, 1.0]
    zero = rows[0]
    assert zero["zh_delta_points"] == 0.0 and zero["en_delta_points"] == 0.0
    assert abs(zero["ppl_zh"]) < 1e-4 and abs(zero["ppl_en"]) < 1e-4
    assert rows[2]["ppl_zh"] < 0  # trained on Chinese: the held-out Chinese loss falls at full scale


def test_rerun_skips_every_step(first_run, capsys):
    work, _ = first_run
    assert main(["run", "--work_dir", str(work), *FAST, "--adapter_scales", "0,0.5,1"]) == 0
    assert "0 ran, 0 redone, 17 skipped" in capsys.readouterr().out


def test_a_kill_between_each_steps_outputs_and_its_record_is_finished_by_a_rerun(first_run, capsys):
    """Issue 13 finding 0: every step killed at its commit point (outputs written, record not).

    Each step's record is put back to ``running`` as the kill left it; the rerun must accept or
    finish every step (no "already exists, pass --overwrite" dead end) and change no result.
    """
    work, _ = first_run
    steps_dir = work / ".zhlora" / "steps"
    tracked = sorted((work / "evaluation_results").glob("*/results.json")) + [
        work / "results" / "lora-demo" / "adapter_model.safetensors", work / "processed_data" / "meta.json"]
    before = {path: path.read_bytes() for path in tracked}
    records = sorted(steps_dir.glob("*.json"))
    assert len(records) == 17
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["status"] = "running"
        record["stamp_before"] = None
        for key in ("output_stamp", "finished_at", "seconds"):
            record.pop(key)
        path.write_text(json.dumps(record), encoding="utf-8")
    assert main(["run", "--work_dir", str(work), *FAST, "--adapter_scales", "0,0.5,1"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "17 ran, 0 redone, 0 skipped" in out
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["status"] == "complete" and record["redo"] is False, path.name
    assert {path: path.read_bytes() for path in tracked} == before


def test_changed_setting_redoes_training_and_after_but_not_the_baseline(first_run, capsys, caplog):
    work, _ = first_run
    baseline = (work / "evaluation_results" / "baseline" / "results.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="zhlora.experiment"):
        assert main(["run", "--work_dir", str(work), *FAST, "--learning_rate", "0.004"]) == 0
    out = capsys.readouterr().out
    # the three scales' steps were planned before; now only scale 1 is: train, evaluate, compare, report redone
    assert "4 redone" in out and "0 ran" in out
    assert "train.learning_rate: 0.002 -> 0.004" in caplog.text
    assert (work / "evaluation_results" / "baseline" / "results.json").read_bytes() == baseline
    record = json.loads((work / ".zhlora" / "steps" / "train.lora-demo.json").read_text(encoding="utf-8"))
    assert record["redo"] is True and record["command"].endswith("--overwrite")


def test_dry_run_shows_the_plan_and_runs_nothing(first_run, capsys):
    work, _ = first_run
    assert main(["run", "--work_dir", str(work), *FAST, "--lora_rank", "4", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "download-model: complete, same settings; skipping" in out
    train_line = next(line for line in out.splitlines() if "] train.lora-demo:" in line)
    assert "redoing: settings changed (" in train_line and "lora.lora_rank: 16 -> 4" in train_line
    assert "zhlora train --config" in out and out.count("--overwrite") >= 2
    record = json.loads((work / ".zhlora" / "steps" / "train.lora-demo.json").read_text(encoding="utf-8"))
    assert record["settings"]["lora"]["lora_rank"] == 16


def test_a_failing_step_names_itself_and_how_to_continue(tmp_path, capsys):
    work = tmp_path / "work"
    status = main(["run", "--work_dir", str(work), *FAST, "--model_name_or_path", str(tmp_path / "no-such-model"),
                   "--model_source", "local"])
    err = capsys.readouterr().err
    assert status == 2
    assert "zhlora download-model: error:" in err and "Step download-model failed" in err
    assert Path(work / "data" / "belle" / "train.jsonl").is_file()  # the steps before it are kept


def test_two_shard_sweep_reuses_the_work_folder_and_merges(first_run, capsys):
    """A two-trial sweep in the same work folder: data, model, baseline and preprocessing are shared."""
    work, _ = first_run
    sweep = [*FAST, "--max_steps", "2", "--lora_ranks", "4,8", "--lora_alphas", "16", "--lora_dropouts", "0.05"]
    baseline_record = work / ".zhlora" / "steps" / "evaluate.baseline.json"
    before = baseline_record.read_text(encoding="utf-8")

    assert main(["sweep", "--work_dir", str(work), *sweep, "--shard", "0/2"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 trials complete" in out and "lora-demo-r4-a16-d0.05" in out
    assert not (work / "results" / "lora-demo-r8-a16-d0.05").exists()

    assert main(["sweep", "--work_dir", str(work), *sweep, "--shard", "1/2"]) == 0
    assert "2 of 2 trials complete" in capsys.readouterr().out
    assert baseline_record.read_text(encoding="utf-8") == before  # the baseline was evaluated once, by `zhlora run`

    summary_dir = work / "sweeps" / "lora-demo"
    summary = json.loads((summary_dir / "summary.json").read_text(encoding="utf-8"))
    assert [row["status"] for row in summary["trials"]] == ["complete", "complete"]
    assert all(row["ppl_zh"] is not None and row["zh_delta_points"] is not None for row in summary["trials"])
    html = (summary_dir / "report.html").read_text(encoding="utf-8")
    assert "lora-demo-r8-a16-d0.05" in html and "data:image/png;base64" in html
    assert (summary_dir / "learning_forgetting.png").is_file() and (summary_dir / "heatmap_zh_d0.05.png").is_file()
    at_chance = all(row["accuracy_at_chance"] for row in summary["trials"])
    assert (summary_dir / "tradeoff.png").is_file() != at_chance  # accuracy points only when they are not noise

    assert main(["sweep", "--work_dir", str(work), *sweep, "--summary_only"]) == 0
    assert "2 of 2 trials complete" in capsys.readouterr().out
    rows = {row["name"]: row for row in runs_overview(work)}
    assert rows["lora-demo-r8-a16-d0.05"]["status"] == "compared"


def test_seeds_train_beside_the_run_and_report_the_spread(first_run, capsys):
    """--seeds 2 adds one seed run (lora-demo-seed43) to the first run and a "Training seeds" section."""
    work, _ = first_run
    assert main(["run", "--work_dir", str(work), *FAST, "--adapter_scales", "0,0.5,1", "--seeds", "2"]) == 0
    assert "Report:" in capsys.readouterr().out
    assert not (work / "evaluation_results" / "lora-demo-seed43-scale0").exists()  # extra seeds: scale 1 only
    seeds = json.loads((work / "evaluation_results" / "lora-demo" / "seeds.json").read_text(encoding="utf-8"))
    assert seeds["seeds"] == [42, 43] and seeds["runs"] == {"42": "lora-demo", "43": "lora-demo-seed43"}
    seed43 = json.loads((work / "evaluation_results" / "lora-demo-seed43" / "forgetting.json").read_text(encoding="utf-8"))
    mmlu = next(row for row in seeds["rows"] if row["measure"] == "mmlu")
    first = json.loads((work / "evaluation_results" / "lora-demo" / "forgetting.json").read_text(encoding="utf-8"))
    changes = [next(r["delta_points"] for r in f["rows"] if r["level"] == "benchmark" and r["name"] == "mmlu")
               for f in (first, seed43)]
    assert mmlu["changes"] == {"42": changes[0], "43": changes[1]}
    assert mmlu["mean"] == pytest.approx(sum(changes) / 2) and mmlu["sd"] == pytest.approx(abs(changes[0] - changes[1]) / 2**0.5)
    report = (work / "evaluation_results" / "lora-demo" / "report.md").read_text(encoding="utf-8")
    assert "## Training seeds" in report and "mean ± SD between seeds" in report
    manifest = json.loads((work / "results" / "lora-demo-seed43" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 43


@pytest.mark.slow
def test_the_demo_with_no_arguments_learns_chinese(tmp_path, monkeypatch, capsys):
    """`zhlora run` exactly as the README says: embedded demo, offline, report written, zh loss falls."""
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    report_dir = tmp_path / "zhlora_work" / "evaluation_results" / "lora-demo"
    assert f"Report: {Path('zhlora_work') / 'evaluation_results' / 'lora-demo' / 'report.html'}" in out
    forgetting = json.loads((report_dir / "forgetting.json").read_text(encoding="utf-8"))
    ppl_zh = next(row for row in forgetting["perplexity"] if row["benchmark"] == "ppl_zh")
    assert ppl_zh["tuned_loss"] < ppl_zh["base_loss"]
