"""Data-parallel evaluation: the unit split, the gather, per-process resume, and 2 CPU processes under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zhlora.evaluation.distributed import assign_units

BENCHMARKS = ("ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en")


@pytest.mark.parametrize("sizes,world", [([5, 5, 5, 5], 2), ([64, 64, 10, 3], 3), ([1], 4), ([], 2), ([7, 1, 1, 1, 1, 1, 1, 1], 2)])
def test_assign_units_covers_every_unit_and_balances_items(sizes, world):
    owners = assign_units(sizes, world)
    assert len(owners) == len(sizes) and all(0 <= r < world for r in owners)
    load = [sum(s for s, r in zip(sizes, owners) if r == rank) for rank in range(world)]
    assert max(load) - min(load) <= max(sizes, default=0)  # LPT: within one unit of balance
    assert owners == assign_units(sizes, world)  # every process computes the same split


def test_assign_units_one_process_owns_everything():
    assert assign_units([3, 2, 1], 1) == [0, 0, 0]
    with pytest.raises(ValueError):
        assign_units([1], 0)


@pytest.fixture(scope="module")
def engine_and_items(tiny_model_dir, sample_data_dir):
    from zhlora.data.benchmarks import resolve_spec
    from zhlora.evaluation.items import load_benchmark_items
    from zhlora.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    items = {name: load_benchmark_items(sample_data_dir, resolve_spec(name), shots=1, limit=12) for name in BENCHMARKS}
    return model, tokenizer, items


def test_shares_of_two_processes_merge_into_the_one_process_result_and_resume(engine_and_items, tmp_path, monkeypatch):
    """Small units (5 items) so that GSM8K and the perplexity sets are split too; rank 1 resumes from the cache."""
    from zhlora.evaluation import benchdata, runner
    from zhlora.evaluation.hf_model import HFEvalModel

    monkeypatch.setattr(benchdata, "CHUNK_ITEMS", 5)
    model, tokenizer, items = engine_and_items
    model.eval()
    engine = HFEvalModel(model, tokenizer, batch_size=4)
    whole = runner.merge_shares(items, [runner.score_share(engine, items, max_new_tokens=4)])
    cache = runner.PredictionCache(tmp_path / ".cache", {"test": 1})
    shares = [runner.score_share(engine, items, max_new_tokens=4, cache=cache, rank=r, world_size=2) for r in (0, 1)]
    for name in BENCHMARKS:
        assert len(runner.benchmark_units(items[name])) >= 2, name
        assert shares[0]["rows"][name] and shares[1]["rows"][name], name  # both processes scored part of it
        assert not set(shares[0]["rows"][name]) & set(shares[1]["rows"][name])
    merged = runner.merge_shares(items, shares)
    for name in BENCHMARKS:
        assert merged[name].predictions == whole[name].predictions and merged[name].summary == whole[name].summary

    def fail(*args, **kwargs):
        raise AssertionError("a cached unit was scored again")

    monkeypatch.setattr(runner, "run_unit", fail)  # rank 1 restarted: every unit of its share comes from the cache
    again = runner.score_share(engine, items, max_new_tokens=4, cache=cache, rank=1, world_size=2)
    assert again["rows"] == shares[1]["rows"]
    with pytest.raises(Exception, match="bug in zhlora"):
        runner.merge_shares(items, shares[:1])  # a missing process's units are never silently dropped


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_cpu_processes_without_a_device_flag_write_byte_identical_results(tiny_model_dir, sample_data_dir,
                                                                               tmp_path, launcher):
    """The documented command as typed (no --device): on a machine without CUDA the processes join one gloo group."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU default of --device auto")
    flags = ["--model_path", str(tiny_model_dir), "--data_dir", str(sample_data_dir), "--results_dir", "out",
             "--limit", "2", "--shots", "1", "--max_new_tokens", "4", "--batch_size", "8"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    single = subprocess.run([sys.executable, "-m", "zhlora", "evaluate", *flags], cwd=one, env=_env(),
                            capture_output=True, text=True, timeout=600, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, *LAUNCHERS[launcher], "-m", "zhlora", "evaluate", *flags]
    double = subprocess.run(launch, cwd=two, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("out:") == 1  # one process printed and wrote the results
    assert "2 processes" in double.stderr, double.stderr[-2000:]  # both joined one group (rank 0 of 2 logs it)
    files = ["results.json", *(f"predictions/{name}.jsonl" for name in BENCHMARKS)]
    for name in files:
        assert (one / "out" / name).read_bytes() == (two / "out" / name).read_bytes(), name
    assert not (two / "out" / ".cache").exists()
