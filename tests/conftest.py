"""Shared fixtures: the real data folder (skips when absent), the tiny model, the bundled samples."""

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
    from zhlora.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "base_model")


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    """``download-data --source sample`` output (normalized jsonl + manifest), built once."""
    from zhlora.data.sources import download_data

    out = tmp_path_factory.mktemp("sample_data") / "data"
    download_data(out, source="sample", belle_sample_size=200)
    return out


@pytest.fixture(scope="session")
def shared_eval_data(shared_data, tmp_path_factory) -> Path:
    """``download-data --source local:../shared/data`` of the benchmark sources (real items), built once."""
    from zhlora.data.sources import download_data

    out = tmp_path_factory.mktemp("shared_eval_data") / "data"
    download_data(out, source=f"local:{shared_data}", datasets=["ceval", "cmmlu", "mmlu", "gsm8k", "english_text"])
    return out
