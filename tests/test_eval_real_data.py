"""The real benchmark files (../shared/data): every subject loads, has its few-shot pool, and scores."""

from __future__ import annotations

import pytest

from zhlora.data.benchmarks import resolve_spec
from zhlora.evaluation.items import ALL, load_benchmark_items
from zhlora.evaluation.runner import evaluate_benchmarks

pytestmark = pytest.mark.shared_data

# Published sizes: C-Eval val, CMMLU test, MMLU test, GSM8K test (docs/evaluation.md).
EXPECTED = {"ceval": (52, 1346), "cmmlu": (67, 11582), "mmlu": (57, 14042)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_subject_loads_with_five_shots(shared_eval_data, name):
    bench = load_benchmark_items(shared_eval_data, resolve_spec(name), shots=5)
    subjects, items = EXPECTED[name]
    assert len(bench.groups) == subjects and bench.n_items == items
    assert set(bench.groups) == set(bench.subjects)  # every subject has a name and categories
    assert all(len(bench.fewshot[s]) >= 5 for s in bench.groups)


def test_gsm8k_and_english_text_load(shared_eval_data):
    gsm8k = load_benchmark_items(shared_eval_data, resolve_spec("gsm8k", gsm8k_variant="gsm8k"))
    assert gsm8k.n_items == 1319 and len(gsm8k.fewshot[ALL]) == 7473
    assert load_benchmark_items(shared_eval_data, resolve_spec("ppl_en")).n_items > 0


def test_every_subject_scores_on_the_tiny_model(shared_eval_data, tiny_model_dir):
    """One question per subject of all three benchmarks (0-shot keeps the CPU time small)."""
    from zhlora.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir, torch_dtype="float32"), load_tokenizer(tiny_model_dir)
    items = {name: load_benchmark_items(shared_eval_data, resolve_spec(name), shots=0, limit=1) for name in EXPECTED}
    results = evaluate_benchmarks(model, tokenizer, items, batch_size=16)
    for name, (subjects, _) in EXPECTED.items():
        summary = results[name].summary
        assert summary["n"] == len(summary["subjects"]) == subjects
        assert sum(c["n"] for c in summary["categories"].values()) >= subjects
