"""zhlora merge: merged logits equal base + adapter logits; safe outputs; clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from zhlora.cli import run_command
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.models.manifest import model_fingerprint, read_model_manifest


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (non-zero) B, so it really changes the logits."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(tiny_model_dir, torch_dtype="float32"),
                           LoraConfig(r=8, lora_alpha=16, init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter") / "run"
    model.save_pretrained(folder)
    return folder


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["答案： A", "The answer is B because 2+2=4."], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, adapter_dir, tmp_path, capsys):
    from peft import PeftModel

    out = tmp_path / "merged"
    argv = ["--base_model_path", str(tiny_model_dir), "--lora_model_path", str(adapter_dir), "--output_dir", str(out)]
    assert run_command("merge", argv) == 0
    tokenizer = load_tokenizer(tiny_model_dir)
    base = load_model(tiny_model_dir, torch_dtype="float32")
    base_logits = _logits(base, tokenizer)
    with_adapter = _logits(PeftModel.from_pretrained(base, adapter_dir), tokenizer)
    merged = _logits(load_model(out, torch_dtype="float32"), tokenizer)
    assert (with_adapter - base_logits).abs().max() > 1e-3, "the adapter must change the logits for this test to mean anything"
    torch.testing.assert_close(merged, with_adapter, atol=1e-5, rtol=0)
    # a complete model folder: tokenizer copied unchanged, manifest naming base and adapter
    assert (out / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    manifest = read_model_manifest(out)
    assert manifest["source"] == "merge" and manifest["dtype"] == "float32"
    assert manifest["base_model"]["weights_sha256"] == model_fingerprint(tiny_model_dir)
    assert manifest["adapter"]["config"]["r"] == 8
    assert model_fingerprint(out) != model_fingerprint(tiny_model_dir)
    assert str(out) in capsys.readouterr().out


def test_merge_refuses_non_empty_output_unless_overwrite(tiny_model_dir, adapter_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    argv = ["--base_model_path", str(tiny_model_dir), "--lora_model_path", str(adapter_dir), "--output_dir", str(out)]
    assert run_command("merge", argv) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "precious.txt").exists()
    assert run_command("merge", [*argv, "--overwrite", "--save_dtype", "bfloat16"]) == 0
    assert not (out / "precious.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == read_model_manifest(out)["dtype"] == "bfloat16"
    assert load_model(out, torch_dtype="bfloat16").dtype is torch.bfloat16


@pytest.mark.parametrize("case", ["missing", "no_config", "bin_only", "wrong_base", "truncated", "config_not_json",
                                  "missing_base", "truncated_base"])
def test_merge_bad_adapter_is_a_clear_error(tiny_model_dir, adapter_dir, tmp_path, capsys, case):
    from transformers import LlamaConfig, LlamaForCausalLM

    adapter, base = tmp_path / "adapter", tiny_model_dir
    if case != "missing":
        shutil.copytree(adapter_dir, adapter)
    if case == "no_config":
        (adapter / "adapter_config.json").unlink()
    if case == "bin_only":
        (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    if case == "wrong_base":  # same architecture, other sizes: the adapter cannot fit
        base = tmp_path / "other_base"
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2)
        LlamaForCausalLM(config).save_pretrained(base)
    if case == "truncated":
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    if case == "config_not_json":
        (adapter / "adapter_config.json").write_bytes(b'{"peft_type": "LORA", "r": 8,')
    if case == "missing_base":
        base = tmp_path / "nonexistent" / "model"
    if case == "truncated_base":
        base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
        weights = base / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = ["--base_model_path", str(base), "--lora_model_path", str(adapter), "--output_dir", str(tmp_path / "out")]
    assert run_command("merge", argv) == 2
    err = capsys.readouterr().err
    expected = {"missing": "does not exist", "no_config": "no adapter_config.json", "bin_only": "pickled",
                "wrong_base": "does not fit the base model",
                "truncated": "adapter_model.safetensors is not a complete safetensors file",
                "config_not_json": "adapter_config.json is not valid JSON",
                "missing_base": f"--base_model_path {base}: no such folder",
                "truncated_base": "model.safetensors is not a complete safetensors file"}[case]
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
