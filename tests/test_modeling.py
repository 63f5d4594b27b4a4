"""The tiny Llama, tokenizer quirks, the one model loader, dtypes and fingerprints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from zhlora.errors import ZhloraError
from zhlora.filenames import MODEL_MANIFEST
from zhlora.models.loading import load_model, load_tokenizer, resolve_dtype
from zhlora.models.manifest import model_fingerprint, read_model_manifest, weights_digest
from zhlora.models.tiny import build_tiny_model, corpus_texts

LETTERS = "ABCD"


# ---------------------------------------------------------------------------------------
# The tiny model
# ---------------------------------------------------------------------------------------
def test_tiny_model_is_a_real_llama_saved_like_a_downloaded_one(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MODEL_MANIFEST} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    model = load_model(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.vocab_size == len(tokenizer)
    manifest = read_model_manifest(tiny_model_dir)
    assert manifest["source"] == "tiny" and manifest["tiny"]["parameters"] == model.num_parameters()
    batch = tokenizer(["答案： A", "Answer: B is right"], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_tiny_build_is_deterministic_and_seeded(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    first, second = read_model_manifest(tiny_model_dir), read_model_manifest(again)
    assert first["files"]["model.safetensors"] == second["files"]["model.safetensors"]
    assert first["files"]["tokenizer.json"] == second["files"]["tokenizer.json"]
    assert model_fingerprint(again) == model_fingerprint(tiny_model_dir)
    assert model_fingerprint(other) != model_fingerprint(tiny_model_dir)
    assert read_model_manifest(other)["files"]["tokenizer.json"] == first["files"]["tokenizer.json"]


def test_tiny_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ZhloraError, match="not empty"):
        build_tiny_model(tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_corpus_reads_json_values_csv_cells_and_text_lines():
    files = [
        ("a.jsonl", '{"instruction": "\\u4f60\\u597d", "output": "世界"}\n\n'.encode()),
        ("b.json", json.dumps([{"q": "问题", "choices": ["甲", "乙"]}]).encode()),
        ("c.csv", "id,question\n1,法律\n".encode()),
        ("d.txt", "first line\n\nsecond line\n".encode()),
    ]
    texts = corpus_texts(files)
    for expected in ("你好", "世界", "问题", "甲", "乙", "法律", "first line", "second line"):
        assert expected in texts
    assert not any("instruction" in t or "{" in t for t in texts)


# ---------------------------------------------------------------------------------------
# The tiny tokenizer behaves like Llama-2's
# ---------------------------------------------------------------------------------------
def _continuation(tokenizer, context: str, continuation: str) -> list[str]:
    """lm-eval's split: encode(context + continuation) minus the tokens of the context."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    prefix = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert whole[: len(prefix)] == prefix
    return tokenizer.convert_ids_to_tokens(whole[len(prefix):])


@pytest.mark.parametrize("context", ["答案：", "Answer:", "问题：1+1=?\nA. 1\nB. 2\n答案："])
def test_answer_letters_are_single_tokens_as_lm_eval_scores_them(tiny_model_dir, context):
    tokenizer = load_tokenizer(tiny_model_dir)
    for letter in LETTERS:
        assert _continuation(tokenizer, context, " " + letter) == ["▁" + letter]  # lm-eval: " A"
        assert _continuation(tokenizer, context, letter) == [letter]  # official: bare letter after "答案："
        assert tokenizer.convert_tokens_to_ids(letter) != tokenizer.unk_token_id


def test_tiny_tokenizer_round_trips_any_text_without_unk(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = "中文：为什么天空是蓝色的？English: rainbows 🌈, naïve café, ☃ and 12345."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 1 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("2024", add_special_tokens=False)["input_ids"]) == ["▁", "2", "0", "2", "4"]
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == ("<unk>", "<s>", "</s>")
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.add_bos_token and not tokenizer.add_eos_token
    assert tokenizer.pad_token == "<unk>" and tokenizer.padding_side == "right"
    assert load_tokenizer(tiny_model_dir, padding_side="left").padding_side == "left"


# ---------------------------------------------------------------------------------------
# Real Llama-2 tokenizers (shared data)
# ---------------------------------------------------------------------------------------
def test_llama2_sentencepiece_folder_loads_with_bos_like_the_hub(shared_data, tmp_path):
    folder = tmp_path / "llama2"
    folder.mkdir()
    shutil.copy(shared_data / "tokenizers" / "llama2" / "tokenizer.model", folder)
    tokenizer = load_tokenizer(folder)
    assert len(tokenizer) == 32000
    assert tokenizer("Answer: A")["input_ids"] == [1, 673, 29901, 319]  # <s> ▁Answer : ▁A
    assert _continuation(tokenizer, "答案：", " A") == ["▁A"]
    assert tokenizer.pad_token == "<unk>"


def test_chinese_llama2_tokenizer_extends_llama2(shared_data):
    tokenizer = load_tokenizer(shared_data / "tokenizers" / "chinese-llama2")
    assert len(tokenizer) == 55296
    ids = tokenizer("答案： A", add_special_tokens=False)["input_ids"]
    assert ids[-1] == 319 and any(i >= 32000 for i in ids)  # Chinese pieces beyond Llama-2's vocab


def test_empty_tokenizer_is_rejected(tmp_path):
    from transformers import LlamaTokenizer

    LlamaTokenizer().save_pretrained(tmp_path / "empty")  # only <unk> <s> </s>: every text becomes <unk>
    with pytest.raises(ZhloraError, match="is empty"):
        load_tokenizer(tmp_path / "empty")


# ---------------------------------------------------------------------------------------
# load_model and its errors
# ---------------------------------------------------------------------------------------
def test_resolve_dtype():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") is torch.float32
    with pytest.raises(ZhloraError, match="--torch_dtype"):
        resolve_dtype("fp8")


def test_load_model_dtype(tiny_model_dir):
    assert load_model(tiny_model_dir, torch_dtype="bfloat16").dtype is torch.bfloat16
    assert load_model(tiny_model_dir).dtype is resolve_dtype("auto")


@pytest.mark.parametrize("case", ["missing", "no_config", "no_weights", "bin_only", "tiny_name"])
def test_load_model_errors_name_the_path_and_the_fix(tmp_path, tiny_model_dir, case):
    folder = tmp_path / "base_model"
    if case != "missing":
        folder.mkdir()
    if case in ("no_weights", "bin_only"):
        shutil.copy(tiny_model_dir / "config.json", folder)
    if case in ("no_config", "bin_only"):
        (folder / "pytorch_model.bin").write_bytes(b"pickle")
    expected = {"missing": "does not exist", "no_config": "no config.json", "no_weights": "no \\*.safetensors",
                "bin_only": "only pickled weights", "tiny_name": '"tiny" names a model to import'}[case]
    target = "tiny" if case == "tiny_name" else folder
    with pytest.raises(ZhloraError, match=expected) as info:
        load_model(target)
    assert "zhlora download-model" in str(info.value) or "convert" in str(info.value).lower()
    if case != "tiny_name":
        assert str(folder) in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_4bit_on_cpu_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ZhloraError, match="--load_in_4bit needs a CUDA GPU"):
        load_model(tiny_model_dir, load_in_4bit=True)


def test_tokenizer_missing_from_a_folder(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ZhloraError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "m")


# ---------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------
def test_fingerprint_reads_manifest_and_recomputes_when_files_changed(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    manifest = read_model_manifest(copy)
    assert model_fingerprint(copy) == manifest["weights_sha256"] == weights_digest(manifest["files"])
    (copy / MODEL_MANIFEST).unlink()
    assert model_fingerprint(copy) == manifest["weights_sha256"]  # same value without the manifest
    shutil.copy(tiny_model_dir / MODEL_MANIFEST, copy)
    with open(copy / "model.safetensors", "ab") as handle:
        handle.write(b"\0")  # size no longer matches the manifest: recomputed from the files
    tampered = model_fingerprint(copy)
    assert tampered != manifest["weights_sha256"]
    (copy / "tokenizer.json").write_text("{}")  # tokenizer files never affect the weight identity
    assert model_fingerprint(copy) == tampered


def test_hub_ids_load_through_hf_endpoint_and_fail_clearly(tiny_model_dir, tmp_path):
    """``load_model``/``load_tokenizer`` also take hub ids (here served by the local hub)."""
    import os
    import subprocess
    import sys

    from hub_server import HubServer

    script = (
        "import sys\nfrom zhlora.errors import ZhloraError\nfrom zhlora.models.loading import load_model, load_tokenizer\n"
        "print(load_model('zhlora-test/tiny').num_parameters(), len(load_tokenizer('zhlora-test/tiny')))\n"
        "try:\n    load_model('zhlora-test/missing')\nexcept ZhloraError as exc:\n    print('ERROR', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubServer() as hub:
        hub.add_repo("zhlora-test/tiny", tiny_model_dir)
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, error = out.stdout.splitlines()[-2:]
    manifest = read_model_manifest(tiny_model_dir)
    assert loaded == f"{manifest['tiny']['parameters']} {manifest['tiny']['vocab_size']}"
    assert error.startswith('ERROR Could not load the model "zhlora-test/missing": it is not a local folder')
    assert "zhlora download-model" in error
