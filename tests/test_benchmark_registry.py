"""Issue 10: one registry of benchmark facts, and a new benchmark is one new spec file.

The toy benchmark (``tests/toy_benchmark.py``) is registered, evaluated with ``zhlora
evaluate`` on the tiny model, and compared; the language the analysis reports comes from
``results.json``, not from the registry.
"""

from __future__ import annotations

import json
import shutil

import pytest
import toy_benchmark

from zhlora.analysis.compare import compare_results, ordered_benchmarks
from zhlora.analysis.labels import benchmark_label
from zhlora.cli import run_command
from zhlora.config import ALL_BENCHMARKS, SIZE_FIELDS, EvalConfig
from zhlora.data import benchmarks
from zhlora.data.categories import BENCHMARKS as CATEGORIZED
from zhlora.errors import ZhloraError


def test_config_and_analysis_facts_come_from_the_registry():
    assert ALL_BENCHMARKS == ["ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en"]
    assert set(SIZE_FIELDS) <= {f for f in EvalConfig.__dataclass_fields__}
    assert EvalConfig(gsm8k_limit=3, limit=5).size_of("gsm8k") == 3 and EvalConfig(limit=5).size_of("cmmlu") == 5
    assert CATEGORIZED == ("ceval", "cmmlu", "mmlu")
    assert benchmark_label("ppl_zh") == "PPL (zh)" and benchmark_label("ppl_zh", "zh") == "中文困惑度"
    assert benchmark_label("unknown") == "unknown"
    # reading order: Chinese, then English, registry order within a language; files may carry other languages
    entries = {name: {} for name in ALL_BENCHMARKS} | {"zz": {"language": "fr"}, "aa": {"language": "zh"}}
    assert ordered_benchmarks(entries) == ["ceval", "cmmlu", "ppl_zh", "aa", "mmlu", "gsm8k", "ppl_en", "zz"]


def test_register_refuses_ambiguous_benchmarks():
    bench = toy_benchmark.BENCHMARK
    with pytest.raises(ZhloraError, match="already registered"):
        benchmarks.register(benchmarks.get("mmlu"))
    with pytest.raises(ZhloraError, match="language must be one of"):
        benchmarks.register(bench.__class__(**{**bench.__dict__, "language": "chinese"}))
    mismatched = bench.__class__(**{**bench.__dict__, "name": "other"})
    with pytest.raises(ZhloraError, match="every variant needs the benchmark's name"):
        benchmarks.register(mismatched)
    assert "other" not in benchmarks.BENCHMARKS and "toy_zh" not in benchmarks.BENCHMARKS


@pytest.fixture
def toy_registered():
    benchmarks.register(toy_benchmark.BENCHMARK)
    yield toy_benchmark.BENCHMARK
    del benchmarks.BENCHMARKS["toy_zh"]


def _toy_data(folder):
    rows = {
        "test": [{"id": f"toy-test-{i}", "subject": "arithmetic" if i < 4 else "geography",
                  "question": f"问题 {i}", "choices": ["一", "二", "三", "四"], "answer": "ABCD"[i % 4]} for i in range(7)],
        "dev": [{"id": f"toy-dev-{i}", "subject": subject, "question": "示例", "choices": ["一", "二", "三", "四"],
                 "answer": "B"} for subject in ("arithmetic", "geography") for i in range(1)],
    }
    (folder / "toy").mkdir(parents=True)
    for split, split_rows in rows.items():
        (folder / "toy" / f"{split}.jsonl").write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows), encoding="utf-8")
    return folder


def test_a_toy_benchmark_in_one_spec_file_runs_end_to_end(toy_registered, tmp_path, tiny_model_dir, capsys):
    data_dir = _toy_data(tmp_path / "data")
    assert "toy_zh" not in benchmarks.benchmark_names(default_only=True)
    folders = [tmp_path / "base", tmp_path / "again"]
    code = run_command("evaluate", [
        "--model_path", str(tiny_model_dir), "--data_dir", str(data_dir), "--benchmarks", "toy_zh",
        "--results_dir", str(folders[0]), "--sample_max_new_tokens", "0", "--no_compare", "--batch_size", "4"])
    assert code == 0, capsys.readouterr().err
    shutil.copytree(folders[0], folders[1])  # the same model evaluated twice, without paying for it twice
    entry = json.loads((folders[0] / "results.json").read_text(encoding="utf-8"))["benchmarks"]["toy_zh"]
    assert entry["kind"] == "multiple_choice" and entry["language"] == "zh" and entry["shots"] == 1
    assert entry["n"] == 7 and set(entry["subjects"]) == {"arithmetic", "geography"}
    predictions = [json.loads(line) for line in (folders[0] / "predictions" / "toy_zh.jsonl").read_text().splitlines()]
    assert [row["id"] for row in predictions] == [f"toy-test-{i}" for i in range(7)]
    assert all(len(row["loglikelihoods"]) == 4 and max(row["loglikelihoods"]) < 0 for row in predictions)

    del benchmarks.BENCHMARKS["toy_zh"]  # the analysis reads files only: the language comes from results.json
    try:
        forgetting = compare_results(folders[0], folders[1], tmp_path / "cmp", bootstrap_samples=200, confidence=0.95,
                                     significance=0.05, seed=0)
    finally:
        benchmarks.BENCHMARKS["toy_zh"] = toy_benchmark.BENCHMARK
    toy_rows = [row for row in forgetting["rows"] if row["benchmark"] == "toy_zh"]
    assert toy_rows and {row["language"] for row in toy_rows} == {"zh"}
    assert toy_rows[0]["delta_points"] == 0  # the same model twice
