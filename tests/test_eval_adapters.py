"""LoRA adapters: applied unmerged, scaled, and the guard against an adapter that is not applied."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from zhlora.errors import ZhloraError
from zhlora.evaluation.adapters import (
    check_adapter_applied,
    check_adapter_folder,
    load_adapter,
    set_adapter_scale,
)


def _base(tiny_model_dir):
    from zhlora.models.loading import load_model

    return load_model(tiny_model_dir, torch_dtype="float32")


def make_adapter(tiny_model_dir, folder, trained=True):
    """Save a LoRA adapter of the tiny model; ``trained`` gives it non-zero B (it changes the logits)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not trained)
    get_peft_model(_base(tiny_model_dir), config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "run")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from zhlora.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _logits(model, tokenizer, text="北京 Beijing"):
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits


def test_adapter_is_applied_and_scaled(tiny_model_dir, adapter_dir, tokenizer):
    model = load_adapter(_base(tiny_model_dir), adapter_dir)
    check = check_adapter_applied(model, tokenizer, adapter_dir)
    assert check["ok"] and check["applied_modules"] == check["expected_modules"] == 8
    assert check["max_logit_change"] > 0
    full = _logits(model, tokenizer)
    with model.disable_adapter():
        base = _logits(model, tokenizer)
    set_adapter_scale(model, 0.0)
    assert torch.equal(_logits(model, tokenizer), base)
    set_adapter_scale(model, 0.5)
    half = _logits(model, tokenizer)
    assert 0 < (half - base).abs().max() < (full - base).abs().max()
    set_adapter_scale(model, 1.0)
    assert torch.allclose(_logits(model, tokenizer), full)


def test_untrained_adapter_is_flagged(tiny_model_dir, tmp_path, tokenizer):
    folder = make_adapter(tiny_model_dir, tmp_path / "untrained", trained=False)
    check = check_adapter_applied(load_adapter(_base(tiny_model_dir), folder), tokenizer, folder)
    assert not check["ok"] and check["max_logit_change"] == 0.0
    assert "NO EFFECT" in check["message"]


def test_adapter_with_foreign_module_names_is_flagged(tiny_model_dir, adapter_dir, tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    shutil.copytree(adapter_dir, folder)
    weights = load_file(folder / "adapter_model.safetensors")
    save_file({k.replace(".layers.", ".blocks."): v for k, v in weights.items()}, folder / "adapter_model.safetensors")
    with pytest.warns(UserWarning, match="missing adapter keys"):
        model = load_adapter(_base(tiny_model_dir), folder)
    check = check_adapter_applied(model, tokenizer, folder)
    assert not check["ok"] and check["applied_modules"] == 0 and "NOT APPLIED" in check["message"]


def test_adapter_of_another_base_model_is_a_clear_error(tiny_model_dir, adapter_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "other_base"
    shutil.copytree(adapter_dir, folder)
    weights = load_file(folder / "adapter_model.safetensors")
    save_file({k: torch.zeros(v.shape[0], 2 * v.shape[1]) if "lora_A" in k else v for k, v in weights.items()},
              folder / "adapter_model.safetensors")
    with pytest.raises(ZhloraError, match="does not fit this base model .*size mismatch"):
        load_adapter(_base(tiny_model_dir), folder)


def test_adapter_folder_checks(tmp_path, adapter_dir):
    with pytest.raises(ZhloraError, match="is not a folder"):
        check_adapter_folder(tmp_path / "missing")
    with pytest.raises(ZhloraError, match="no adapter_config.json"):
        check_adapter_folder(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ZhloraError, match="safetensors only"):
        check_adapter_folder(pickled)
    assert check_adapter_folder(adapter_dir) == adapter_dir
