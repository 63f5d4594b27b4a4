"""Issue 10: the held-out Chinese loss (``ppl_zh``) is the training loss on unseen rows, by construction.

Evaluation encodes a held-out row with preprocessing's own encoder and reads token losses from
the training loss's own function; here the same rows go through ``tokenize_rows`` and the
training loop's forward/loss (``packed_forward``) and must give the same tokens, the same
scored positions and the same loss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zhlora.data.preprocess import IGNORE_INDEX, tokenize_rows
from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items, resolve_spec
from zhlora.evaluation.requests import response_sequence
from zhlora.training.loop import attention_layout, packed_forward
from zhlora.training.packing import collate_bins

ROWS = 12


@pytest.mark.parametrize("template", ["alpaca", "llama2_chat"])
def test_heldout_loss_equals_the_training_loss_on_the_same_rows(tiny_model_dir, sample_data_dir, template):
    from zhlora.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir, torch_dtype="float32"), load_tokenizer(tiny_model_dir)
    path = sample_data_dir / "belle" / "heldout.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:ROWS]]

    bench = load_benchmark_items(sample_data_dir, resolve_spec("ppl_zh"), limit=ROWS, prompt_template=template)
    summary = evaluate_benchmarks(model, tokenizer, {"ppl_zh": bench}, batch_size=4)["ppl_zh"].summary

    columns, counts = tokenize_rows(tokenizer, rows, template, max_seq_length=100_000, overlong="drop")
    assert counts["rows_out"] == ROWS and not counts["dropped"]
    for doc, ids, labels in zip(bench.groups["all"], columns["input_ids"], columns["labels"]):
        sequence = response_sequence(tokenizer, doc.prompt, doc.text)
        assert sequence.input_ids == ids  # the same tokens, BOS and EOS included
        assert sequence.first_target == labels.count(IGNORE_INDEX)  # the same scored positions

    bins = [[(np.array(ids), np.array(labels))] for ids, labels in zip(columns["input_ids"], columns["labels"])]
    batch = collate_bins(bins, tokenizer.pad_token_id or 0)
    layout = attention_layout(model.config._attn_implementation)
    with torch.no_grad():
        loss_sum, scored = packed_forward(model, batch, layout, torch.float32, "cpu")
    assert scored == summary["n_tokens"] == counts["loss_tokens"]
    assert abs(loss_sum.item() / scored - summary["loss"]) < 1e-5
