"""``--finetuning_type full`` on the tiny model: the control arm of H2, through train, resume after a
kill, evaluate + compare, ``zhlora run``, a sweep with a method axis, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zhlora.cli import main, run_command
from zhlora.config import ExperimentConfig, SweepConfig
from zhlora.errors import ConfigError
from zhlora.experiment.sweep import sweep_trials, trial_config

FLAGS = ["--finetuning_type", "full", "--max_seq_length", "256", "--per_device_train_batch_size", "1",
         "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--warmup_ratio", "0", "--logging_steps", "1",
         "--max_steps", "6", "--save_steps", "2", "--seed", "3"]


def _paths(model: Path, processed: Path, output: Path) -> list[str]:
    return ["--model_path", str(model), "--dataset_path", str(processed / "train_dataset"), "--output_dir", str(output)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir, processed) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    assert run_command("train", [*_paths(tiny_model_dir, processed, out), *FLAGS]) == 0
    return out


def test_full_run_writes_a_model_folder_that_evaluate_reads(full_run, tiny_model_dir, sample_data_dir, tmp_path):
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["finetuning_type"] == "full" and manifest["learning_rate"] == 1e-3
    assert manifest["adapter"]["trainable_parameters"] == manifest["adapter"]["total_parameters"]
    model_manifest = json.loads((full_run / "zhlora_manifest.json").read_text())
    assert model_manifest["source"] == "finetune"
    assert set(model_manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not any(name.startswith(("checkpoint-", "training_log")) for name in model_manifest["files"])
    base, tuned = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(full_run / "model.safetensors"))
    changed = [k for k in base if k in tuned and not torch.equal(base[k], tuned[k])]
    assert any("q_proj" in k for k in changed) and any("embed_tokens" in k for k in changed)  # every weight trains
    spectrum = json.loads((full_run / "weight_change.json").read_text())
    assert spectrum["method"] == "full" and spectrum["rank90_median"] >= 1

    fast = ["--benchmarks", "ceval,ppl_zh,ppl_en", "--limit", "2", "--shots", "0", "--ppl_zh_documents", "20",
            "--ppl_en_documents", "20", "--sample_max_new_tokens", "0", "--data_dir", str(sample_data_dir)]
    base_dir, tuned_dir = tmp_path / "baseline", tmp_path / "full"
    assert run_command("evaluate", ["--model_path", str(tiny_model_dir), "--results_dir", str(base_dir), *fast]) == 0
    assert run_command("evaluate", ["--model_path", str(full_run), "--results_dir", str(tuned_dir), *fast]) == 0
    results = json.loads((tuned_dir / "results.json").read_text())
    assert results["model"]["finetuned_from"]["weights_sha256"] == json.loads(
        (base_dir / "results.json").read_text())["model"]["base_sha256"]
    assert run_command("compare", [str(base_dir), str(tuned_dir), "--no-report", "--bootstrap_samples", "200"]) == 0
    forgetting = json.loads((tuned_dir / "forgetting.json").read_text())
    assert set(forgetting["hypotheses"]) >= {"H1", "H2"}


def test_sigkill_then_rerun_ends_with_the_uninterrupted_model(full_run, tiny_model_dir, processed, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "zhlora", "train", *_paths(tiny_model_dir, processed, out), *FLAGS],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-2").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    assert run_command("train", [*_paths(tiny_model_dir, processed, out), *FLAGS]) == 0
    reference, resumed = load_file(str(full_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert reference.keys() == resumed.keys()
    assert max(float((reference[k] - resumed[k]).abs().max()) for k in reference) <= 1e-5


def test_lora_flags_with_full_and_other_bad_input_are_refused(tiny_model_dir, processed, tmp_path, capsys):
    paths = _paths(tiny_model_dir, processed, tmp_path / "x")
    assert run_command("train", [*paths, *FLAGS, "--lora_rank", "8"]) == 2
    assert "--finetuning_type full trains every weight, so --lora_rank would have no effect" in capsys.readouterr().err
    assert run_command("train", [*paths, "--finetuning_type", "partial"]) == 2
    assert "--finetuning_type must be one of lora, full" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--adapter_scales"):
        from zhlora.config import EvalConfig, TrainConfig

        ExperimentConfig(train=TrainConfig(finetuning_type="full"), eval=EvalConfig(adapter_scales=[0.0, 1.0]))
    with pytest.raises(ConfigError, match='unknown method "qlora"'):
        SweepConfig(methods=["qlora"])


def test_the_method_axis_expands_and_full_is_one_trial_whatever_the_rank():
    cfg = ExperimentConfig(run_name="h", sweep=SweepConfig(lora_ranks=[4, 16], lora_alphas=[32], lora_dropouts=[0.05],
                                                           methods=["lora", "dora", "full"]))
    trials = sweep_trials(cfg)
    assert [t.name for t in trials] == ["h-r4-a32-d0.05", "h-r16-a32-d0.05", "h-dora-r4-a32-d0.05",
                                        "h-dora-r16-a32-d0.05", "h-full"]
    assert trial_config(cfg, trials[2]).lora.use_dora and trial_config(cfg, trials[4]).train.finetuning_type == "full"
    assert trial_config(cfg, trials[0]).train.finetuning_type == "lora"
    from zhlora.training.outputs import identity_lora_settings

    full = trial_config(cfg, trials[4])
    assert identity_lora_settings({"lora_rank": 4}, {"finetuning_type": "full"}) is None
    assert full.train.peak_learning_rate == 1e-5 and trial_config(cfg, trials[0]).train.peak_learning_rate == 2e-4


def test_zhlora_run_with_full_fine_tuning_end_to_end(tmp_path):
    """The pipeline evaluates the run folder as the model and pairs it with the baseline."""
    work = tmp_path / "work"
    fast = ["--max_steps", "3", "--save_steps", "2", "--limit", "1", "--gsm8k_limit", "1", "--ppl_zh_documents", "2",
            "--ppl_en_documents", "1", "--shots", "0", "--max_new_tokens", "8", "--bootstrap_samples", "100",
            "--sample_max_new_tokens", "0"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["run", "--work_dir", str(work), "--finetuning_type", "full", "--run_name", "full-demo", *fast])
    assert status == 0, out.getvalue()
    assert "H2 (English forgetting within budget" in out.getvalue()
    results = json.loads((work / "evaluation_results" / "full-demo" / "results.json").read_text())
    assert results["model"]["base_path"].endswith("results/full-demo") and results["model"]["adapter_path"] is None
    assert (work / "evaluation_results" / "full-demo" / "report.html").is_file()


def test_a_sweep_with_a_method_axis_runs_lora_and_full_side_by_side(tmp_path):
    """lora x 1 rank and full: two trials sharing one baseline; the summary has both methods, their
    spectra (full's rank above LoRA's) and their verdicts."""
    work = tmp_path / "work"
    fast = ["--max_steps", "3", "--save_steps", "3", "--benchmarks", "ppl_zh,ppl_en", "--ppl_zh_documents", "20",
            "--ppl_en_documents", "20", "--max_new_tokens", "8", "--bootstrap_samples", "100", "--sample_max_new_tokens",
            "0", "--monitor_every", "1", "--probe_overhead", "0", "--probe_limit", "4"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["sweep", "--work_dir", str(work), "--run_name", "m", "--methods", "lora,full", "--lora_ranks", "4",
                       "--lora_alphas", "8", "--lora_dropouts", "0.05", "--full_learning_rate", "1e-3", *fast])
    assert status == 0, out.getvalue()
    summary = json.loads((work / "sweeps" / "m" / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["trials"]}
    assert set(rows) == {"m-r4-a8-d0.05", "m-full"} and all(r["status"] == "complete" for r in rows.values())
    assert rows["m-full"]["method"] == "full" and rows["m-full"]["rank90_median"] > rows["m-r4-a8-d0.05"]["rank90_median"]
    assert all(r["H1"] and r["H2"] and len(r["trajectory"]) == 4 for r in rows.values())  # steps 0..3
    assert (work / "sweeps" / "m" / "learning_forgetting.png").stat().st_size > 0
    html = (work / "sweeps" / "m" / "report.html").read_text()
    assert "m-full" in html and "rank at 90% of ΔW" in html
    # A full disk while the summary is written (its last file): one paragraph, no summary that looks complete,
    # and the same command writes it after space is freed.
    import errno
    import os

    from test_storage_faults import FailingWrites

    sweep_dir = work / "sweeps" / "m"
    for name in ("summary.json", "summary.md", "report.html"):
        (sweep_dir / name).unlink()
    counter = FailingWrites(sweep_dir)
    real_replace = os.replace
    os.replace = counter
    try:
        assert main(["sweep", "--work_dir", str(work), "--run_name", "m", "--methods", "lora,full", "--lora_ranks", "4",
                     "--lora_alphas", "8", "--lora_dropouts", "0.05", "--full_learning_rate", "1e-3", *fast]) == 0
        writes = counter.calls
        (sweep_dir / "summary.json").unlink()
        os.replace = FailingWrites(sweep_dir, at=writes, code=errno.ENOSPC)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status = main(["sweep", "--work_dir", str(work), "--run_name", "m", "--methods", "lora,full", "--lora_ranks",
                           "4", "--lora_alphas", "8", "--lora_dropouts", "0.05", "--full_learning_rate", "1e-3", *fast])
        assert status == 2 and "is full" in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
        assert not (sweep_dir / "summary.json").exists()
    finally:
        os.replace = real_replace
    assert main(["sweep", "--work_dir", str(work), "--run_name", "m", "--methods", "lora,full", "--lora_ranks", "4",
                 "--lora_alphas", "8", "--lora_dropouts", "0.05", "--full_learning_rate", "1e-3", *fast]) == 0
    assert json.loads((sweep_dir / "summary.json").read_text())["trials"] == summary["trials"]
