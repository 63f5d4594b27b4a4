"""Damaged result files, and commands that would destroy work: each a clear paragraph, nothing replaced.

- ``report``/``compare``/``ls`` on a forgetting.json or results.json that is truncated, not JSON or
  missing keys: the file, the key, and the command that writes it again.
- ``merge`` into its base model's or adapter's folder (or a folder holding them), even with
  ``--overwrite``; ``train`` into a model, dataset or results folder; ``--work_dir`` that is a file.
- ``--shots`` takes any k the dev split holds, as lm-eval's ``num_fewshot``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import EVAL_FLAGS, TRAIN_FLAGS

from zhlora.cli import run_command
from zhlora.io_utils import sha256_file


@pytest.fixture(scope="module")
def compared(tiny_results, tmp_path_factory) -> Path:
    """A work-folder-shaped copy: evaluation_results/{base,run}/ with the run compared to the base."""
    work = tmp_path_factory.mktemp("compared_work")
    evals = work / "evaluation_results"
    shutil.copytree(tiny_results / "base", evals / "base")
    shutil.copytree(tiny_results / "tuned", evals / "run")
    assert run_command("compare", [str(evals / "base"), str(evals / "run"), "--output_dir", str(evals / "run")]) == 0
    return work


def _error(capsys, verb: str, argv: list) -> str:
    assert run_command(verb, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().startswith(f"zhlora {verb}: error:"), err
    return err


def _damage(path: Path, how: str) -> None:
    text = path.read_text(encoding="utf-8")
    if how == "truncated":
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif how == "not_json":
        path.write_bytes(b"\x00\x01 binary garbage")
    else:  # a key removed
        data = json.loads(text)
        del data[how]
        path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("how", ["truncated", "not_json", "rows", "headline", "hypotheses"])
def test_report_on_a_damaged_forgetting_json_names_the_file_the_key_and_the_command(how, compared, tmp_path, capsys):
    work = Path(shutil.copytree(compared, tmp_path / "work"))
    forgetting = work / "evaluation_results" / "run" / "forgetting.json"
    _damage(forgetting, how)
    err = _error(capsys, "report", [forgetting.parent])
    assert str(forgetting) in err and "zhlora compare" in err and "--overwrite" in err, err
    if how not in ("truncated", "not_json"):
        assert f'"{how}"' in err, err
    # ls keeps listing the other runs and says what is wrong with this one
    assert run_command("ls", ["runs", str(work)]) == 0
    out = capsys.readouterr().out
    assert "compared, but its forgetting.json is damaged" in out and "base" in out


def test_report_on_a_row_without_its_keys_is_a_clear_error(compared, tmp_path, capsys):
    work = Path(shutil.copytree(compared, tmp_path / "work"))
    forgetting = work / "evaluation_results" / "run" / "forgetting.json"
    data = json.loads(forgetting.read_text())
    del data["rows"][0]["level"]
    forgetting.write_text(json.dumps(data))
    err = _error(capsys, "report", [forgetting.parent])
    assert 'rows[0] lacks "level"' in err and "zhlora compare" in err


@pytest.mark.parametrize("how", ["truncated", "not_json", "benchmarks", "model"])
def test_compare_and_ls_on_a_damaged_results_json(how, compared, tmp_path, capsys):
    work = Path(shutil.copytree(compared, tmp_path / "work"))
    results = work / "evaluation_results" / "base" / "results.json"
    _damage(results, how)
    err = _error(capsys, "compare", [results.parent, work / "evaluation_results" / "run", "--output_dir",
                                     tmp_path / "out"])
    assert str(results) in err and "zhlora evaluate" in err and "--overwrite" in err, err
    if how not in ("truncated", "not_json"):
        assert f'"{how}"' in err, err
    assert not (tmp_path / "out" / "forgetting.json").exists()
    assert run_command("ls", ["runs", str(work)]) == 0
    assert "evaluated, but its results.json is damaged" in capsys.readouterr().out


def test_a_missing_benchmark_key_is_named(compared, tmp_path, capsys):
    work = Path(shutil.copytree(compared, tmp_path / "work"))
    results = work / "evaluation_results" / "base" / "results.json"
    data = json.loads(results.read_text())
    del data["benchmarks"]["ceval"]["accuracy_micro"]
    results.write_text(json.dumps(data))
    err = _error(capsys, "compare", [results.parent, work / "evaluation_results" / "run", "--output_dir",
                                     tmp_path / "out"])
    assert '"benchmarks.ceval.accuracy_micro" is missing' in err


# ---------------------------------------------------------------------------------------
# Commands that would destroy work
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["base", "adapter", "parent_of_base"])
def test_merge_never_writes_over_its_own_inputs_even_with_overwrite(target, tiny_model_dir, tiny_results, tmp_path,
                                                                    capsys):
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "models" / "base_model"))
    adapter = Path(shutil.copytree(tiny_results / "adapter", tmp_path / "adapter"))
    before = {path: sha256_file(path) for path in [*base.iterdir(), *adapter.iterdir()] if path.is_file()}
    output = {"base": base, "adapter": adapter, "parent_of_base": base.parent}[target]
    err = _error(capsys, "merge", ["--base_model_path", base, "--lora_model_path", adapter, "--output_dir", output,
                                   "--overwrite"])
    assert "zhlora refuses it even with --overwrite" in err and "Choose a new folder" in err
    assert {path: sha256_file(path) for path in before} == before  # nothing replaced


@pytest.mark.parametrize("holds", ["model", "processed", "results", "data"])
def test_train_refuses_an_output_dir_that_holds_something_else(holds, tiny_model_dir, processed, sample_data_dir,
                                                               tiny_results, tmp_path, capsys):
    source = {"model": tiny_model_dir, "processed": processed, "results": tiny_results / "base",
              "data": sample_data_dir}[holds]
    folder = Path(shutil.copytree(source, tmp_path / "folder"))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    for extra in ([], ["--overwrite"]):
        err = _error(capsys, "train", ["--model_path", tiny_model_dir, "--dataset_path", processed / "train_dataset",
                                       "--output_dir", folder, *TRAIN_FLAGS, *extra])
        assert f"--output_dir {folder} holds" in err and "not a training run" in err, err
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_an_output_folder_or_work_dir_that_is_a_file_is_a_clear_error(tiny_model_dir, sample_data_dir, processed,
                                                                      tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    err = _error(capsys, "run", ["--work_dir", file])
    assert f"--work_dir {file} is a file, not a folder" in err
    err = _error(capsys, "evaluate", ["--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--results_dir",
                                      file, *EVAL_FLAGS])
    assert f"{file} is a file, not a folder" in err
    err = _error(capsys, "train", ["--model_path", tiny_model_dir, "--dataset_path", processed / "train_dataset",
                                   "--output_dir", file, *TRAIN_FLAGS])
    assert f"--output_dir {file} is a file, not a folder" in err
    assert file.read_text() == "not a folder"


# ---------------------------------------------------------------------------------------
# --shots: any k the dev split holds
# ---------------------------------------------------------------------------------------
def test_shots_takes_any_k_the_dev_split_holds_and_refuses_more(tiny_model_dir, sample_data_dir, tmp_path, capsys):
    flags = ["--model_path", tiny_model_dir, "--data_dir", sample_data_dir, "--benchmarks", "ceval", "--limit", "1",
             "--batch_size", "4", "--sample_max_new_tokens", "0", "--num_threads", "1"]
    assert run_command("evaluate", [str(a) for a in [*flags, "--shots", "3", "--results_dir", tmp_path / "k3"]]) == 0
    results = json.loads((tmp_path / "k3" / "results.json").read_text())
    assert results["settings"]["shots"] == 3 and results["benchmarks"]["ceval"]["shots"] == 3
    capsys.readouterr()
    err = _error(capsys, "evaluate", [*flags, "--shots", "6", "--results_dir", tmp_path / "k6"])
    assert "fewer than --shots 6" in err and "dev" in err, err
    # the settings lock follows k: the same k reuses the folder, another k is refused naming both
    assert run_command("evaluate", [str(a) for a in [*flags, "--shots", "3", "--results_dir", tmp_path / "k3"]]) == 0
    err = _error(capsys, "evaluate", [*flags, "--shots", "2", "--results_dir", tmp_path / "k3"])
    assert "settings.shots: 3 -> 2" in err, err
    text = zhlora_help("evaluate")
    assert "0 or 5" not in text and "num_fewshot" in text


def test_k_shots_put_the_first_k_dev_examples_in_the_prompt(tiny_model_dir, sample_data_dir):
    """The prompt of a k-shot C-Eval item holds k answered dev examples, then the question (lm-eval's layout)."""
    from zhlora.data.benchmarks import resolve_spec
    from zhlora.evaluation.items import load_benchmark_items
    from zhlora.evaluation.tasks.multiple_choice import choice_requests
    from zhlora.models.loading import load_tokenizer

    tokenizer, spec = load_tokenizer(tiny_model_dir), resolve_spec("ceval")
    for k in (0, 3, 5):
        bench = load_benchmark_items(sample_data_dir, spec, shots=k, limit=1)
        subject, questions = next(iter(bench.groups.items()))
        request = choice_requests(tokenizer, bench, subject, questions)[0]
        text = request.prompt.prefix + request.prompt.query
        assert text.count("答案：") == k + 1, (k, text)
        for shot in bench.fewshot.get(subject, [])[:k]:
            assert shot.question in request.prompt.prefix


def zhlora_help(verb: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "zhlora", verb, "--help"], capture_output=True, text=True,
                          check=True).stdout
