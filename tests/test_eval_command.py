"""`zhlora evaluate` and the seed scripts end to end on the tiny model: outputs, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zhlora.cli import run_command

REPO = Path(__file__).resolve().parents[1]
FAST = ["--limit", "1", "--shots", "1", "--max_new_tokens", "4", "--batch_size", "8"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _script(name, *argv, cwd):
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, argv)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from test_eval_adapters import make_adapter

    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("run") / "lora-chinese-llama")


def test_seed_scripts_evaluate_base_and_adapter_offline(tmp_path, monkeypatch, tiny_model_dir, sample_data_dir, adapter_dir):
    usage = _script("evaluate_baseline.py", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and "--model_path" in usage.stdout and "--limit" in usage.stdout
    monkeypatch.chdir(tmp_path)  # the baseline in-process (same code path), the adapter run as the seed script
    assert run_command("evaluate", ["--model_path", str(tiny_model_dir), "--results_dir", "evaluation_results/baseline",
                                    "--data_dir", str(sample_data_dir), *FAST]) == 0
    tuned = _script("evaluate_model.py", "--base_model_path", tiny_model_dir, "--lora_model_path", adapter_dir,
                    "--results_dir", "evaluation_results/lora", "--data_dir", sample_data_dir, *FAST, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    for name, has_adapter in (("baseline", False), ("lora", True)):
        folder = tmp_path / "evaluation_results" / name
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        assert results["schema_version"] == 1 and "created_at" not in results["provenance"]
        assert set(results["benchmarks"]) == {"ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en"}
        for bench, entry in results["benchmarks"].items():
            rows = (folder / entry["predictions_file"]).read_text(encoding="utf-8").splitlines()
            assert len(rows) == entry.get("n", entry.get("n_documents")), bench
            assert entry["spec_version"] and entry["item_ids_sha256"]
        mmlu = results["benchmarks"]["mmlu"]
        assert mmlu["n"] == len(mmlu["subjects"]) == 8 and set(mmlu["categories"]) <= {"stem", "humanities", "social_sciences", "other"}
        assert 0.0 <= mmlu["accuracy_micro"] <= 1.0 and results["benchmarks"]["ppl_en"]["perplexity"] > 1.0
        assert results["model"]["base_sha256"] and (results["model"]["adapter_sha256"] is not None) == has_adapter
        assert (folder / "results.md").is_file() and (folder / "timings.json").is_file()
        assert list(folder.glob("*.png")) and not (folder / ".cache").exists()
    check = json.loads((tmp_path / "evaluation_results/lora/results.json").read_text())["model"]["adapter_check"]
    assert check["ok"] and check["applied_modules"] == 8
    assert (tmp_path / "evaluation_results/lora/forgetting.json").is_file()  # baseline beside it -> compared
    report_html = (tmp_path / "evaluation_results/lora/report.html").read_text(encoding="utf-8")
    assert 'id="headline"' in report_html and "LoRA 微调后" in report_html  # and the report beside it


def test_resume_after_sigkill_gives_byte_identical_results(tmp_path, tiny_model_dir, sample_data_dir, caplog):
    """Only the killed evaluation is a subprocess; the reference and the resume run in this process
    (with the subprocess's two threads), which keeps the test cheap."""
    import logging

    import torch

    out = tmp_path / "out"
    args = ["--model_path", str(tiny_model_dir), "--data_dir", str(sample_data_dir), "--results_dir", str(out),
            "--benchmarks", "mmlu,gsm8k", "--limit", "1", "--shots", "1", "--max_new_tokens", "16", "--batch_size", "4",
            "--num_threads", "2"]  # the same float summation order in every process, whatever the load
    threads = torch.get_num_threads()
    try:
        assert run_command("evaluate", args) == 0
        expected = {p.relative_to(out): p.read_bytes() for p in [out / "results.json", *out.glob("predictions/*.jsonl")]}
        subprocess.run(["rm", "-rf", str(out)], check=True)

        process = subprocess.Popen([sys.executable, "-m", "zhlora", "evaluate", *args], cwd=tmp_path, env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not list((out / ".cache" / "mmlu").glob("*.json")) and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"
        assert not (out / "results.json").exists()
        cached = list((out / ".cache").glob("*/*.json"))
        assert cached and all(json.loads(p.read_text())["rows"] for p in cached)  # finished units, written whole

        with caplog.at_level(logging.INFO, logger="zhlora.evaluation"):
            assert run_command("evaluate", args) == 0  # the kill left a stale lock: taken over
    finally:
        torch.set_num_threads(threads)
    assert "Resuming the evaluation" in caplog.text
    assert {p: (out / p).read_bytes() for p in expected} == expected


def _evaluate(capsys, *argv):
    code = run_command("evaluate", [str(a) for a in argv])
    return code, capsys.readouterr().err


def test_missing_benchmark_data_names_the_download_command(capsys, tmp_path, tiny_model_dir):
    code, err = _evaluate(capsys, "--model_path", tiny_model_dir, "--data_dir", tmp_path / "data", "--benchmarks", "cmmlu")
    assert code == 2 and "cmmlu/test.jsonl is missing" in err and "zhlora download-data --datasets cmmlu" in err


def test_unknown_benchmark_and_subject_suggest_names(capsys, tiny_model_dir, sample_data_dir):
    code, err = _evaluate(capsys, "--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--benchmarks", "cevall")
    assert code == 2 and 'Did you mean "ceval"' in err
    code, err = _evaluate(capsys, "--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--benchmarks", "ceval",
                          "--subjects", "computer_netwrok")
    assert code == 2 and 'Did you mean "computer_network"' in err


def test_existing_results_and_foreign_cache_are_not_mixed(capsys, monkeypatch, tmp_path, tiny_model_dir, sample_data_dir):
    from zhlora.evaluation import runner

    common = ["--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--benchmarks", "ceval", "--limit", "1",
              "--results_dir"]
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text("{}")
    code, err = _evaluate(capsys, *common, done)
    assert code == 2 and "already holds results made with other settings" in err and "--overwrite" in err

    real_run_unit, units = runner.run_unit, []

    def interrupted(*args, **kwargs):
        if units:
            raise KeyboardInterrupt
        units.append(1)
        return real_run_unit(*args, **kwargs)

    monkeypatch.setattr(runner, "run_unit", interrupted)
    code, err = _evaluate(capsys, *common, tmp_path / "partial", "--shots", "0")
    assert code == 130 and len(list((tmp_path / "partial" / ".cache" / "ceval").glob("*.json"))) == 1
    monkeypatch.setattr(runner, "run_unit", real_run_unit)
    code, err = _evaluate(capsys, *common, tmp_path / "partial", "--shots", "1")
    assert code == 2 and "other settings (settings.shots: 0 -> 1" in err and "--overwrite" in err
    code, err = _evaluate(capsys, *common, tmp_path / "partial", "--shots", "1", "--overwrite")
    assert code == 0 and (tmp_path / "partial" / "results.json").is_file()

    # Killed after results.json, before its other files (issue 13 finding 0): the same command
    # accepts the finished results and completes the folder, without evaluating again.
    finished = tmp_path / "partial" / "results.json"
    before = finished.read_bytes()
    for name in ("results.md", "accuracy.png"):
        (tmp_path / "partial" / name).unlink(missing_ok=True)
    monkeypatch.setattr(runner, "run_unit", lambda *a, **k: pytest.fail("evaluated again"))
    code, err = _evaluate(capsys, *common, tmp_path / "partial", "--shots", "1")
    assert code == 0 and finished.read_bytes() == before
    assert (tmp_path / "partial" / "results.md").is_file() and (tmp_path / "partial" / "accuracy.png").is_file()
    code, err = _evaluate(capsys, *common, tmp_path / "partial", "--shots", "0")
    assert code == 2 and "other settings (settings.shots: 1 -> 0" in err


@pytest.mark.parametrize("case", ["truncated_adapter", "config_not_json", "truncated_base", "missing_model"])
def test_corrupted_files_and_missing_model_are_clear_errors(capsys, tmp_path, tiny_model_dir, adapter_dir, sample_data_dir, case):
    """Issue 13 findings 3 and 4: one paragraph naming the file and what to do, no traceback."""
    model, adapter = tiny_model_dir, Path(shutil.copytree(adapter_dir, tmp_path / "adapter"))
    if case == "truncated_adapter":
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-64])
    elif case == "config_not_json":
        (adapter / "adapter_config.json").write_bytes(b"\xff\xfe not json")
    elif case == "truncated_base":
        model = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:4096])
    else:
        model = tmp_path / "nonexistent" / "model"
    code, err = _evaluate(capsys, "--model_path", model, "--lora_model_path", adapter, "--data_dir", sample_data_dir,
                          "--benchmarks", "ceval", "--limit", "1", "--results_dir", tmp_path / "out")
    expected = {"truncated_adapter": "adapter_model.safetensors is not a complete safetensors file",
                "config_not_json": "adapter_config.json is not valid JSON",
                "truncated_base": "model.safetensors is not a complete safetensors file",
                "missing_model": f"--model_path {model}: no such folder"}[case]
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "results.json").exists()


def test_subjects_may_name_their_benchmark(capsys, caplog, tmp_path, tiny_model_dir, sample_data_dir):
    """`marketing` is in CMMLU and MMLU: a bare name takes both and says so; cmmlu:marketing picks one."""
    import logging

    from zhlora.errors import ConfigError
    from zhlora.recipes.evaluate import split_subjects

    assert split_subjects(["mmlu:marketing", "nutrition"], ["cmmlu", "mmlu"]) == ({"mmlu": ["marketing"]}, ["nutrition"])
    with pytest.raises(ConfigError, match='"mmmlu" is not one of the evaluated benchmarks.*Did you mean "mmlu"'):
        split_subjects(["mmmlu:marketing"], ["cmmlu", "mmlu"])
    common = ["--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--benchmarks", "cmmlu,mmlu", "--limit", "1",
              "--shots", "0"]
    with caplog.at_level(logging.INFO, logger="zhlora.recipes.evaluate"):
        code, err = _evaluate(capsys, *common, "--subjects", "marketing", "--results_dir", tmp_path / "both")
    assert code == 0, err
    assert "--subjects marketing: found in cmmlu and mmlu (write cmmlu:marketing to evaluate one of them)" in caplog.text
    both = json.loads((tmp_path / "both" / "results.json").read_text())["benchmarks"]
    assert set(both) == {"cmmlu", "mmlu"}
    code, err = _evaluate(capsys, *common, "--subjects", "mmlu:marketing", "--results_dir", tmp_path / "one")
    assert code == 0, err
    one = json.loads((tmp_path / "one" / "results.json").read_text())["benchmarks"]
    assert set(one) == {"mmlu"} and set(one["mmlu"]["subjects"]) == {"marketing"}
    code, err = _evaluate(capsys, *common, "--subjects", "cmmlu:nutritio", "--results_dir", tmp_path / "bad")
    assert code == 2 and 'no subject "nutritio" in cmmlu' in err


def test_bad_adapter_arguments(capsys, tmp_path, tiny_model_dir, sample_data_dir):
    code, err = _evaluate(capsys, "--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--lora_model_path", tmp_path)
    assert code == 2 and "no adapter_config.json" in err
    code, err = _evaluate(capsys, "--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--adapter_scale", "0.5")
    assert code == 2 and "pass --lora_model_path too" in err
