"""``zhlora train --monitor_every`` on the tiny model: real probes, a budget that stops the run, the exported step.

The tiny model is randomly initialised, so what the budget catches here is the English
perplexity spike of an aggressive learning rate (0.1, rank 64) at step 2, not lost knowledge;
the mechanics are the same as for Llama-2. GSM8K is left out of the run (its generation
dominates the probe time on a CPU) and evaluated on its own in the first test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zhlora.cli import run_command
from zhlora.monitoring.probes import ProbeSizes, evaluate_probes, select_probe_sets

AGGRESSIVE = [
    "--max_seq_length", "256", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
    "--learning_rate", "0.1", "--lora_rank", "64", "--lora_alpha", "128", "--warmup_ratio", "0",
    "--logging_steps", "1", "--max_steps", "8", "--probe_limit", "4", "--seed", "42",
]


@pytest.fixture(scope="module")
def processed(tmp_path_factory, tiny_model_dir, sample_data_dir) -> Path:
    from zhlora.data.preprocess import preprocess_data
    from zhlora.modeling import load_tokenizer

    out = tmp_path_factory.mktemp("processed") / "processed_data"
    preprocess_data(sample_data_dir, out, load_tokenizer(tiny_model_dir), max_seq_length=256)
    return out


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory, sample_data_dir) -> Path:
    """The sample benchmark data without GSM8K train (so the probe skips it)."""
    data = tmp_path_factory.mktemp("probe_data") / "data"
    shutil.copytree(sample_data_dir, data)
    (data / "gsm8k" / "train.jsonl").unlink()
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

    from zhlora.modeling import load_model, load_tokenizer

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


def test_budget_stops_early_and_exports_the_best_step_within_it(tmp_path, tiny_model_dir, processed, probe_data, capsys):
    out = tmp_path / "budget"
    assert _train(tiny_model_dir, processed, probe_data, out, "--monitor_every", "1",
                  "--forgetting_budget", "ppl:2%", "--save_steps", "100") == 0
    printed = capsys.readouterr().out
    assert "Forgetting budget ppl:2% exceeded at step 2: en_ppl rose" in printed
    assert "Final adapter = step 1 (largest Chinese gain" in printed
    assert "% overhead (bound 10%" in printed

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    monitoring = manifest["monitoring"]
    assert (manifest["training"]["status"], manifest["training"]["steps"], manifest["adapter"]["step"]) == ("stopped", 2, 1)
    assert (monitoring["selected_step"], monitoring["selected_within_budget"]) == (1, True)
    assert monitoring["budget_exceeded"]["step"] == 2 and monitoring["probe_steps"] == [0, 1, 2]
    assert "gsm8k_acc" in monitoring["probe_sets"]["skipped"] and monitoring["probe_sets"]["probes"]["mmlu_acc"]["n"] == 4
    assert monitoring["overhead"]["probe_seconds"] > 0 and monitoring["overhead"]["train_seconds"] > 0

    rows = _probe_rows(out)
    assert sorted(rows) == [0, 1, 2]
    assert rows[2]["probes"]["en_ppl"] > 1.02 * rows[0]["probes"]["en_ppl"] >= 1.02 * rows[1]["probes"]["en_ppl"]
    assert rows[1]["probes"]["zh_loss"] < rows[0]["probes"]["zh_loss"]
    assert rows[2]["budget"]["exceeded"] and not rows[1]["budget"]["exceeded"]
    assert (out / "probe_curves.png").stat().st_size > 0 and (out / "probe_sets.json").is_file()
    final = _tensors(out)
    assert _same(final, _tensors(out / "probe_snapshots" / "step-1"))
    assert not _same(final, _tensors(out / "checkpoint-2"))  # the stop checkpoint holds the over-budget step


def test_without_a_budget_the_same_run_goes_to_the_end_unperturbed(tmp_path, tiny_model_dir, processed, probe_data, capsys):
    out, stopped = tmp_path / "observe", tmp_path / "stopped"
    assert _train(tiny_model_dir, processed, probe_data, out, "--monitor_every", "4", "--save_steps", "2",
                  "--save_total_limit", "0") == 0
    printed = capsys.readouterr().out
    assert "adapter after 8 steps" in printed and "Probes: 5 runs" in printed and "exceeded" not in printed
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["training"]["status"], manifest["adapter"]["step"]) == ("completed", 8)
    assert manifest["monitoring"]["forgetting_budget"] is None and manifest["monitoring"]["selected_step"] == 8
    rows = _probe_rows(out)
    assert sorted(rows) == [0, 2, 4, 6, 8]  # every 4 steps and at every checkpoint
    assert _same(_tensors(out), _tensors(out / "checkpoint-8"))

    # the budgeted run probed after step 1 as well and stopped at step 2: same weights and probes at step 2
    assert _train(tiny_model_dir, processed, probe_data, stopped, "--monitor_every", "1",
                  "--forgetting_budget", "ppl:2%", "--save_steps", "100") == 0
    assert _same(_tensors(stopped / "checkpoint-2"), _tensors(out / "checkpoint-2"))
    assert _probe_rows(stopped)[2]["probes"] == rows[2]["probes"]
