"""The weight-change spectrum: known ranks, LoRA's QR shortcut against a direct SVD, planted full updates."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from zhlora.errors import ZhloraError
from zhlora.models import weight_change


def test_rank_at_known_answers():
    assert weight_change.rank_at(torch.tensor([3.0, 0.0, 0.0])) == 1
    assert weight_change.rank_at(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 4  # 3 of 4 equal directions hold 75% only
    assert weight_change.rank_at(torch.tensor([3.0, 1.0])) == 1  # 9 / 10 = 90% exactly
    assert weight_change.rank_at(torch.tensor([2.0, 1.0, 1.0])) == 3  # squares 4, 1, 1: two hold 5/6 < 90%
    assert weight_change.rank_at(torch.zeros(4)) == 0


def test_lora_singular_values_match_a_direct_svd():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 40, generator=generator), torch.randn(30, 8, generator=generator)
    fast = weight_change.lora_singular_values(a, b, 2.5)
    direct = torch.linalg.svdvals(2.5 * b.double() @ a.double())[:8]
    assert torch.allclose(torch.sort(fast, descending=True).values, direct, rtol=1e-9, atol=1e-9)


def test_full_weight_change_finds_a_planted_rank(tmp_path, tiny_model_dir):
    """A rank-3 change planted in every q_proj is reported as rank <= 3; untouched types are rank 0."""
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, tuned)
    weights = load_file(str(tuned / "model.safetensors"))
    generator = torch.Generator().manual_seed(1)
    for key, value in weights.items():
        if key.endswith("q_proj.weight"):
            out, inp = value.shape
            weights[key] = value + 0.1 * torch.randn(out, 3, generator=generator) @ torch.randn(3, inp, generator=generator)
    save_file(weights, str(tuned / "model.safetensors"))
    rows = weight_change.full_weight_change(tiny_model_dir, tuned)
    summary = weight_change.summarize(rows, "full", None)
    assert summary["by_type"]["q_proj"]["rank90_max"] <= 3 and summary["by_type"]["q_proj"]["rank90_median"] >= 2
    assert summary["by_type"]["v_proj"]["rank90_max"] == 0
    assert summary["by_type"]["q_proj"]["relative_norm_mean"] > 0


def test_lora_weight_change_reads_a_peft_adapter(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from zhlora.models.loading import load_model

    model = get_peft_model(load_model(tiny_model_dir, torch_dtype="float32"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "adapter"))
    rows = weight_change.lora_weight_change(tiny_model_dir, tmp_path / "adapter")
    assert {row["type"] for row in rows} == {"q_proj", "v_proj"}
    assert all(1 <= row["rank90"] <= 4 and row["max_rank"] == 4 for row in rows)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["use_dora"] = True
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ZhloraError, match="DoRA"):
        weight_change.lora_weight_change(tiny_model_dir, tmp_path / "adapter")


def test_a_diverged_update_is_reported_not_raised(tmp_path, tiny_model_dir):
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, tuned)
    weights = load_file(str(tuned / "model.safetensors"))
    key = next(k for k in weights if k.endswith("v_proj.weight"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(tuned / "model.safetensors"))
    summary = weight_change.summarize(weight_change.full_weight_change(tiny_model_dir, tuned), "full", None)
    assert summary["non_finite_matrices"] == 1 and summary["by_type"]["v_proj"]["matrices"] >= 1
