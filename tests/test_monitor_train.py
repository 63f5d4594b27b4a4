"""``zhlora train --monitor_every`` on the tiny model: real probes, a budget that stops the run, the exported step.

The tiny model is randomly initialised, so there is no English knowledge to forget: what the
budget catches here is a learning rate (2.0, rank 64) aggressive enough to make the English
perplexity jump and then diverge (NaN) within 8 steps; warm-up makes step 1 a no-op, so a
step within the budget always exists. The mechanics are those of a Llama-2 run. To keep the
runs short they probe only what the budget reads (and the Chinese loss); every probe,
GSM8K generation included, is evaluated for real in the first test. The budget run probes every
step (``--probe_overhead 0``); the observing run keeps the default bound, which on this model
(a step takes about as long as a probe run) defers most due probes.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zhlora.cli import run_command
from zhlora.monitoring.probes import ProbeSizes, evaluate_probes, select_probe_sets

AGGRESSIVE = [
    "--max_seq_length", "256", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
    "--learning_rate", "2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0.25", "--lora_rank", "64",
    "--lora_alpha", "128", "--logging_steps", "1", "--max_steps", "8", "--probe_limit", "2", "--seed", "42",
]


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory, sample_data_dir) -> Path:
    """Only the data of the probes the budget runs need (zh_loss, en_ppl, mmlu_acc); the others are skipped."""
    data = tmp_path_factory.mktemp("probe_data") / "data"
    for source in ("belle", "english_text", "mmlu"):
        shutil.copytree(sample_data_dir / source, data / source)
    return data


def _train(model: Path, processed: Path, probe_data: Path, out: Path, *flags: str) -> int:
    return run_command("train", ["--model_path", str(model), "--dataset_path", str(processed / "train_dataset"),
                                 "--output_dir", str(out), "--probe_data_dir", str(probe_data), *AGGRESSIVE, *flags])


def _probe_rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text(encoding="utf-8").splitlines()]
    return {row["step"]: row for row in rows if "probes" in row}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_probes_on_the_in_memory_model_leave_it_unchanged(tiny_model_dir, sample_data_dir):
    from peft import LoraConfig, get_peft_model

    from zhlora.models.loading import load_model, load_tokenizer

    sizes = ProbeSizes(zh_loss=3, en_ppl=2, en_ppl_chars=400, mmlu_acc=4, gsm8k_acc=1, ceval_acc=2, cmmlu_acc=2)
    suite = select_probe_sets(sample_data_dir, sizes)
    model = get_peft_model(load_model(tiny_model_dir, torch_dtype="float32"), LoraConfig(r=2, target_modules=["q_proj"]))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    measured = evaluate_probes(model, load_tokenizer(tiny_model_dir), suite, batch_size=4, max_new_tokens=16)
    assert set(measured.values) == {"zh_loss", "ceval_acc", "cmmlu_acc", "en_ppl", "mmlu_acc", "gsm8k_acc", "en_acc"}
    assert 0 < measured.values["zh_loss"] < 20 and measured.values["en_ppl"] > 1
    assert all(0 <= measured.values[k] <= 1 for k in measured.values if k.endswith("_acc"))
    pooled = (4 * measured.values["mmlu_acc"] + 1 * measured.values["gsm8k_acc"]) / 5
    assert measured.values["en_acc"] == pytest.approx(pooled, abs=1e-6)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert measured.seconds > 0 and set(measured.seconds_per_probe) == set(suite.items)


def _stop_step(printed: str) -> int:
    match = re.search(r"Forgetting budget ppl:2% exceeded at step (\d+): en_ppl (rose|is nan)", printed)
    assert match, printed
    return int(match.group(1))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, tiny_model_dir, processed, probe_data) -> tuple[Path, str]:
    """The aggressive run with ``--forgetting_budget ppl:2%``, probed after every step (no overhead bound)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("runs") / "budget"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _train(tiny_model_dir, processed, probe_data, out, "--monitor_every", "1",
                      "--forgetting_budget", "ppl:2%", "--save_steps", "100", "--probe_overhead", "0") == 0
    return out, printed.getvalue()


def test_budget_stops_early_and_exports_the_best_step_within_it(budget_run):
    out, printed = budget_run
    stop = _stop_step(printed)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    monitoring = manifest["monitoring"]
    chosen = monitoring["selected_step"]
    assert 1 <= chosen < stop < 8 and monitoring["selected_within_budget"]
    assert f"Final adapter = step {chosen} (largest Chinese gain" in printed
    assert re.search(rf"Probes: {stop} runs, 0 deferred, [0-9.]+ s vs [0-9.]+ s of training = [0-9.]+% overhead "
                     r"\(no bound, --probe_overhead 0", printed)
    assert (manifest["training"]["status"], manifest["training"]["steps"], manifest["adapter"]["step"]) == ("stopped", stop, chosen)
    assert monitoring["budget_exceeded"]["step"] == stop and monitoring["probe_steps"] == list(range(stop + 1))
    assert set(monitoring["probe_sets"]["probes"]) == {"zh_loss", "en_ppl", "mmlu_acc"}
    assert monitoring["probe_sets"]["probes"]["mmlu_acc"]["n"] == 2 and "gsm8k_acc" in monitoring["probe_sets"]["skipped"]
    assert monitoring["overhead"]["probe_seconds"] > 0 and monitoring["overhead"]["train_seconds"] > 0
    assert monitoring["budget_limit_values"]["en_ppl"] == pytest.approx(1.02 * monitoring["baseline"]["en_ppl"])

    rows = _probe_rows(out)
    assert sorted(rows) == list(range(stop + 1))
    assert rows[stop]["budget"]["exceeded"] and not any(rows[s]["budget"]["exceeded"] for s in range(1, stop))
    assert rows[1]["probes"] == rows[0]["probes"]  # warm-up: the first step has learning rate 0
    assert (out / "probe_curves.png").stat().st_size > 0 and (out / "probe_sets.json").is_file()
    final = _tensors(out)
    assert _same(final, _tensors(out / "probe_snapshots" / f"step-{chosen}"))
    assert not _same(final, _tensors(out / f"checkpoint-{stop}"))  # the stop checkpoint holds the over-budget step


_OVERHEAD = re.compile(r"Probes: (\d+) runs?, (\d+) deferred, ([0-9.]+) s vs ([0-9.]+) s of training = ([0-9.]+)% "
                       r"overhead \(bound 10%, the last step is always probed")


def test_default_bound_keeps_the_overhead_within_it_and_probing_leaves_training_unperturbed(
        tmp_path, tiny_model_dir, processed, probe_data, budget_run, capsys):
    out = tmp_path / "observe"
    assert _train(tiny_model_dir, processed, probe_data, out, "--monitor_every", "1", "--save_steps", "100") == 0
    printed = capsys.readouterr().out
    assert "adapter after 8 steps" in printed and "exceeded" not in printed
    match = _OVERHEAD.search(printed)
    assert match, printed
    runs, deferred = int(match[1]), int(match[2])
    probe_seconds, train_seconds, overhead_pct = float(match[3]), float(match[4]), float(match[5])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    overhead = manifest["monitoring"]["overhead"]
    assert (overhead["probe_runs"], overhead["probes_deferred"], overhead["overhead_pct"]) == (runs, deferred, overhead_pct)
    assert (manifest["training"]["status"], manifest["adapter"]["step"]) == ("completed", 8)
    assert manifest["monitoring"]["forgetting_budget"] is None and manifest["monitoring"]["selected_step"] == 8

    rows = _probe_rows(out)
    probed = sorted(rows)[1:]
    assert rows.keys() >= {0, 8} and len(probed) == runs and runs + deferred == 8  # every due step: run or deferred
    assert sum(rows[step]["probes_deferred"] for step in probed) == deferred
    # the bound, from the log: each probe before the last ran only if the probes so far plus the previous run's time
    # fitted in 10% of the training so far; the last step's probe may pass it by one run
    spent, trained, expected = 0.0, 0.0, rows[0]["probe_seconds"]
    for step in probed:
        trained += rows[step]["train_seconds"]
        if step < 8:
            assert spent + expected <= 0.1 * trained + 0.005, (step, rows[step])
        spent += rows[step]["probe_seconds"]
        expected = rows[step]["probe_seconds"]
    one_probe_pct = 100 * max(rows[step]["probe_seconds"] for step in probed) / train_seconds
    assert overhead_pct <= 10 + one_probe_pct + 0.1 and probe_seconds == pytest.approx(spent, abs=0.01)
    english = rows[8]["probes"]["en_ppl"]  # null once the model has diverged
    assert english is None or english > 1.02 * rows[0]["probes"]["en_ppl"]

    # probing is observation only: the budget run, probed after every step, trained exactly the same
    # steps as this one, probed only when the bound allowed (equal losses, NaN included)
    stop = _stop_step(budget_run[1])
    losses = {row["step"]: row["loss"] for row in _rows(out) if "loss" in row}
    budget_losses = {row["step"]: row["loss"] for row in _rows(budget_run[0]) if "loss" in row}
    assert sorted(budget_losses) == list(range(1, stop + 1))
    assert all(budget_losses[s] == losses[s] or (math.isnan(budget_losses[s]) and math.isnan(losses[s])) for s in budget_losses)


def test_monitoring_without_benchmark_data_says_where_to_point_it(tmp_path, tiny_model_dir, processed, capsys):
    code = run_command("train", ["--model_path", str(tiny_model_dir), "--dataset_path", str(processed / "train_dataset"),
                                 "--output_dir", str(tmp_path / "out"), "--probe_data_dir", str(tmp_path / "nowhere"),
                                 *AGGRESSIVE, "--monitor_every", "2"])
    assert code == 2
    message = capsys.readouterr().err
    assert "--monitor_every needs the benchmark data" in message and "--probe_data_dir" in message


def test_full_fine_tuning_under_a_budget_exports_the_chosen_steps_whole_model(tmp_path, tiny_model_dir, processed,
                                                                               probe_data):
    """Monitoring works for --finetuning_type full as for LoRA: stop at the crossing, export the chosen step's weights."""
    import contextlib
    import io

    out = tmp_path / "full-budget"
    flags = ["--max_seq_length", "256", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
             "--learning_rate", "0.05", "--lr_scheduler_type", "constant", "--warmup_ratio", "0.25", "--logging_steps", "1",
             "--max_steps", "8", "--probe_limit", "2", "--seed", "42"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_command("train", ["--model_path", str(tiny_model_dir), "--dataset_path",
                                     str(processed / "train_dataset"), "--output_dir", str(out), "--probe_data_dir",
                                     str(probe_data), *flags, "--finetuning_type", "full", "--monitor_every", "1",
                                     "--forgetting_budget", "ppl:2%", "--save_steps", "100", "--probe_overhead", "0"]) == 0
    stop = _stop_step(printed.getvalue())
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    chosen = manifest["monitoring"]["selected_step"]
    assert 1 <= chosen < stop and manifest["adapter"]["step"] == chosen and manifest["finetuning_type"] == "full"
    final = load_file(str(out / "model.safetensors"))
    snapshot = load_file(str(out / "probe_snapshots" / f"step-{chosen}" / "model.safetensors"))
    assert _same(final, snapshot)
