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
