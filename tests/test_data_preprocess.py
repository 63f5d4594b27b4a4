"""preprocess: templates, prompt masking, the length rule, replay mixing, outputs and reruns."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from data_release import write_release

from zhlora.data.preprocess import (
    IGNORE_INDEX,
    build_example,
    count_han,
    drop_advice,
    length_summary,
    preprocess_data,
    replay_count,
    tokens_per_chinese_char,
    vocab_sha256,
)
from zhlora.data.sources import download_data
from zhlora.data.templates import render_prompt
from zhlora.errors import DataError, ZhloraError
from zhlora.io_utils import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    release = write_release(tmp_path_factory.mktemp("release"))
    out = tmp_path_factory.mktemp("pre") / "data"
    download_data(out, source=f"local:{release}", datasets=["belle", "alpaca"], belle_sample_size=30, belle_heldout_size=6)
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from zhlora.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_render_prompt_templates():
    assert render_prompt("alpaca", "写一首诗") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n写一首诗\n\n### Response:\n"
    )
    with_input = render_prompt("alpaca", "翻译", "你好")
    assert with_input.endswith("### Instruction:\n翻译\n\n### Input:\n你好\n\n### Response:\n")
    assert "paired with an input" in with_input
    assert render_prompt("llama2_chat", "翻译", "你好") == "[INST] 翻译\n你好 [/INST]"
    assert render_prompt("llama2_chat", "写一首诗") == "[INST] 写一首诗 [/INST]"
    with pytest.raises(ZhloraError, match='Did you mean "alpaca"'):
        render_prompt("alpacca", "x")


def test_build_example_masks_the_prompt_and_appends_eos():
    row = build_example([1, 10, 11], [20, 21], eos_id=2, max_seq_length=16, overlong="drop")
    assert row.input_ids == [1, 10, 11, 20, 21, 2]
    assert row.labels == [IGNORE_INDEX] * 3 + [20, 21, 2]
    assert row.drop_reason is None and not row.truncated


def test_build_example_length_rule():
    prompt, response = [1] + list(range(10, 15)), list(range(20, 30))  # 6 + 10 + EOS = 17 tokens
    assert build_example(prompt, response, 2, 17, "drop").input_ids is not None  # exactly fits
    assert build_example(prompt, response, 2, 16, "drop").drop_reason == "too_long"
    cut = build_example(prompt, response, 2, 16, "truncate")
    assert cut.truncated and len(cut.input_ids) == 16 and cut.input_ids[-1] == 29  # no EOS: the answer was cut
    assert cut.labels == [IGNORE_INDEX] * 6 + list(range(20, 30))
    assert build_example(prompt, response, 2, 6, "truncate").drop_reason == "prompt_too_long"
    assert build_example(prompt, [], 2, 16, "drop").drop_reason == "empty_response"


def test_replay_count_and_summaries():
    assert replay_count(0.2, 1000) == 250  # 250 / (1000 + 250) = 20 %
    assert replay_count(0.5, 10) == 10
    assert replay_count(0.0, 10) == 0
    assert length_summary([5, 1, 3, 2, 4]) == {"count": 5, "total": 15, "min": 1, "mean": 3.0, "p50": 3, "p90": 5, "p99": 5, "max": 5}
    assert length_summary([]) == {"count": 0, "total": 0}
    assert count_han("Llama 2 学中文！") == 3


def test_preprocess_writes_masked_datasets_stats_and_meta(data_dir, tokenizer, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "processed"
    stats = preprocess_data(data_dir, out, tokenizer, template="alpaca", max_seq_length=512)
    train = load_from_disk(str(out / "train_dataset"))
    assert train.column_names == ["input_ids", "labels", "length"]
    assert len(train) == 30 == stats["train"]["rows_out"] and stats["eval"]["rows_out"] == 6  # held-out rows counted
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "stats.json", "train_dataset"]  # no unread eval_dataset
    belle = read_jsonl(data_dir / "belle" / "train.jsonl")
    first, row = belle[0], train[0]
    prompt_ids = tokenizer(render_prompt("alpaca", first["instruction"], first["input"]))["input_ids"]
    response_ids = tokenizer(first["output"], add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert row["input_ids"][0] == tokenizer.bos_token_id
    assert row["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert row["labels"][len(prompt_ids):] == response_ids + [tokenizer.eos_token_id]
    assert row["length"] == len(row["input_ids"])
    assert stats["train"]["loss_tokens"] == sum(sum(1 for x in r if x != IGNORE_INDEX) for r in train["labels"])
    assert stats["train"]["lengths"]["total"] == sum(train["length"])
    assert stats["tokens_per_chinese_char"] > 0 and stats["replay"]["used"] == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["vocab_size"] == len(tokenizer)
    assert meta["tokenizer"]["vocab_sha256"] == vocab_sha256(tokenizer)
    assert meta["template"] == "alpaca" and meta["max_seq_length"] == 512
    assert json.loads((out / "stats.json").read_text()) == stats


def test_length_rule_drops_or_truncates_by_flag(data_dir, tokenizer, tmp_path):
    full = preprocess_data(data_dir, tmp_path / "full", tokenizer, template="llama2_chat", max_seq_length=512)
    limit = full["train"]["lengths"]["p50"]  # about half the rows are longer than this
    dropped = preprocess_data(data_dir, tmp_path / "drop", tokenizer, template="llama2_chat", max_seq_length=limit)
    assert 0 < dropped["train"]["dropped"]["too_long"] < 30
    assert dropped["train"]["rows_out"] + dropped["train"]["dropped"]["too_long"] == 30
    assert dropped["train"]["lengths"]["max"] <= limit
    cut = preprocess_data(data_dir, tmp_path / "cut", tokenizer, template="llama2_chat", max_seq_length=limit, overlong="truncate")
    assert cut["train"]["truncated"] == dropped["train"]["dropped"]["too_long"]
    assert cut["train"]["rows_out"] == 30 and cut["train"]["lengths"]["max"] == limit
    with pytest.raises(DataError, match=r"Every training row was dropped: 30 row.s. were longer than --max_seq_length 16: raise it, or .* --overlong truncate"):
        preprocess_data(data_dir, tmp_path / "none", tokenizer, template="llama2_chat", max_seq_length=16)


def test_each_drop_reason_gets_its_own_advice(tmp_path, tokenizer, caplog):
    """Issue 13 finding 8: empty outputs are not a --max_seq_length problem; download-data warns about them."""
    release = write_release(tmp_path / "release")
    for part in (release / "belle").iterdir():  # JSON lines, every output emptied
        rows = [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
        part.write_text("".join(json.dumps({**r, "output": ""}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="zhlora.data"):
        download_data(data, source=f"local:{release}", datasets=["belle"], belle_sample_size=20, belle_heldout_size=2)
    assert "belle: 20 of 20 training rows and 2 of 2 held-out rows have an empty output" in caplog.text
    with pytest.raises(DataError) as info:
        preprocess_data(data, tmp_path / "p", tokenizer)
    message = str(info.value)
    assert "20 row(s) had an empty output" in message and "belle/train.jsonl" in message
    assert "--max_seq_length" not in message and "--overlong" not in message
    assert drop_advice({"too_long": 3}, 512, Path("x")).startswith("3 row(s) were longer than --max_seq_length 512")
    assert "--overlong truncate cannot help" in drop_advice({"prompt_too_long": 1}, 64, Path("x"))


def test_replay_shortfall_is_a_warning_with_both_numbers_and_the_effective_ratio(data_dir, tokenizer, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="zhlora.data"):
        stats = preprocess_data(data_dir, tmp_path / "short", tokenizer, max_seq_length=512, replay_ratio=0.9)
    available = stats["replay"]["used"]
    assert stats["replay"]["requested"] == 270 > available  # 0.9 / 0.1 * 30
    effective = round(available / (30 + available), 4)
    assert stats["replay"]["effective_ratio"] == effective
    assert json.loads((tmp_path / "short" / "stats.json").read_text())["replay"]["effective_ratio"] == effective
    assert f"asks for 270 English rows but only {available} exist" in caplog.text
    assert f"effective replay ratio is {effective:.3f}, not 0.9" in caplog.text


def test_replay_mixes_the_requested_share_of_english(data_dir, tokenizer, tmp_path):
    from datasets import load_from_disk

    stats = preprocess_data(data_dir, tmp_path / "replay", tokenizer, max_seq_length=512, replay_ratio=0.25, seed=3)
    assert stats["replay"] == {"ratio": 0.25, "requested": 10, "used": 10, "effective_ratio": 0.25}  # 10 / (30 + 10)
    train = load_from_disk(str(tmp_path / "replay" / "train_dataset"))
    assert len(train) == 40
    english = tokenizer("Below is an instruction", add_special_tokens=False)["input_ids"]
    assert all(row[1:1 + len(english)] == english for row in train["input_ids"])  # every row is templated
    again = preprocess_data(data_dir, tmp_path / "replay2", tokenizer, max_seq_length=512, replay_ratio=0.25, seed=3)
    assert load_from_disk(str(tmp_path / "replay2" / "train_dataset"))["input_ids"] == train["input_ids"]
    assert again["replay"] == stats["replay"]


def test_non_utf8_normalized_belle_is_a_clear_error(data_dir, tokenizer, tmp_path):
    import shutil

    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    train = data / "belle" / "train.jsonl"
    train.write_bytes(train.read_bytes().replace("。".encode(), b"\xa1\xa3", 1))  # GBK bytes in UTF-8 text
    with pytest.raises(DataError, match=r"belle/train\.jsonl, line \d+: not UTF-8 text"):
        preprocess_data(data, tmp_path / "p", tokenizer)


def test_replay_without_alpaca_names_the_download_command(tokenizer, tmp_path):
    release = write_release(tmp_path / "release")
    data = tmp_path / "data"
    download_data(data, source=f"local:{release}", datasets=["belle"], belle_sample_size=5, belle_heldout_size=1)
    with pytest.raises(DataError, match=r"alpaca/train\.jsonl does not exist.*--datasets alpaca"):
        preprocess_data(data, tmp_path / "p", tokenizer, replay_ratio=0.1)
    with pytest.raises(DataError, match=r"belle/train\.jsonl does not exist.*zhlora download-data"):
        preprocess_data(tmp_path / "nothing", tmp_path / "p", tokenizer)


def test_rerun_reuses_identical_output_and_refuses_different_settings(data_dir, tokenizer, tmp_path):
    out = tmp_path / "p"
    preprocess_data(data_dir, out, tokenizer, max_seq_length=512)
    stamp = (out / "meta.json").stat().st_mtime_ns
    preprocess_data(data_dir, out, tokenizer, max_seq_length=512)
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(ZhloraError, match="other inputs or settings.*--force"):
        preprocess_data(data_dir, out, tokenizer, max_seq_length=256)
    stats = preprocess_data(data_dir, out, tokenizer, max_seq_length=256, force=True)
    assert json.loads((out / "meta.json").read_text())["max_seq_length"] == 256 and stats["train"]["rows_out"] > 0
    assert not list(out.glob(".partial-*"))


def test_seed_script_runs_with_the_seed_flags(data_dir, tiny_model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "preprocess_data.py"), "--data_dir", str(data_dir),
         "--output_dir", str(tmp_path / "processed_data"), "--model_name_or_path", str(tiny_model_dir),
         "--prompt_template", "llama2_chat"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train 30 rows" in result.stdout
    assert "rows/s" in result.stderr  # throughput is logged
    assert json.loads((tmp_path / "processed_data" / "meta.json").read_text())["template"] == "llama2_chat"


@pytest.mark.shared_data
def test_chinese_llama_tokenizer_needs_fewer_tokens_per_chinese_character(shared_data, capsys):
    from zhlora.data.normalize import instruction_from_row
    from zhlora.data.readers import iter_json_records
    from zhlora.models.loading import load_tokenizer

    rows = [instruction_from_row(w, r, fix_literal_newlines=True) for w, r in iter_json_records(shared_data / "belle" / "school_math_0.25M_first1k.json")]
    texts = [f"{r.instruction}\n{r.input}\n{r.output}" for r in rows[:500]]
    llama = tokens_per_chinese_char(load_tokenizer(shared_data / "tokenizers" / "llama2"), texts)
    chinese = tokens_per_chinese_char(load_tokenizer(shared_data / "tokenizers" / "chinese-llama2"), texts)
    with capsys.disabled():
        print(f"\ntokens per Chinese character on 500 BELLE rows: Llama-2 {llama:.3f}, Chinese-LLaMA-2 {chinese:.3f}")
    assert chinese < 0.75 * llama


def _with_chat_template(tokenizer, template: str):
    import copy

    clone = copy.deepcopy(tokenizer)
    clone.chat_template = template
    return clone


def test_chat_template_renders_the_models_turn_and_keeps_one_bos(tokenizer):
    """``chat`` uses apply_chat_template; a template writing BOS itself does not double the tokenizer's BOS."""
    chat = _with_chat_template(
        tokenizer, "{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    text = render_prompt("chat", "翻译", "你好", chat)
    assert text == "<|user|>翻译\n你好<|assistant|>"  # the tokenizer adds <s>: the template's copy is dropped
    ids = chat(text)["input_ids"]
    assert ids[0] == chat.bos_token_id and chat.bos_token_id not in ids[1:]
    with pytest.raises(ZhloraError, match="has no chat template.*--prompt_template alpaca"):
        render_prompt("chat", "翻译", "", _with_chat_template(tokenizer, None))
    with pytest.raises(ZhloraError, match="renders with the model's tokenizer"):
        render_prompt("chat", "翻译")


def test_preprocess_with_chat_template_records_it(data_dir, tokenizer, tmp_path):
    from zhlora.data.templates import template_identity

    chat = _with_chat_template(tokenizer, "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>")
    preprocess_data(data_dir, tmp_path / "p", chat, template="chat", max_seq_length=512)
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["template"] == "chat"
    assert meta["template_identity"] == template_identity("chat", chat)
    assert meta["request"]["chat_template_sha256"] == meta["template_identity"]["chat_template_sha256"]
    from datasets import load_from_disk

    row = load_from_disk(str(tmp_path / "p" / "train_dataset"))[0]
    prompt = [i for i, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX]
    assert prompt[0] == chat.bos_token_id and chat.bos_token_id not in prompt[1:]  # the tokenizer's one BOS
    assert chat.decode(prompt[1:]).strip().startswith("<|user|>") and chat.decode(prompt).endswith("<|assistant|>")
    # another chat template is another request: refused without --force
    other = _with_chat_template(tokenizer, "{% for m in messages %}USER: {{ m['content'] }}{% endfor %}ASSISTANT:")
    with pytest.raises(ZhloraError, match="other inputs or settings"):
        preprocess_data(data_dir, tmp_path / "p", other, template="chat", max_seq_length=512)
