"""Segment attention (one packed row at a time) gives the block-mask path's loss and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zhlora.data.preprocess import IGNORE_INDEX
from zhlora.training.packing import collate_bins
from zhlora.training.segment_attention import SEGMENTS, row_bounds, use_segment_attention


def _rows(vocab: int, lengths, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        ids = rng.integers(3, vocab, size=length)
        labels = ids.copy()
        labels[: length // 3] = IGNORE_INDEX  # a prompt
        rows.append((ids, labels))
    return rows


def _lora_model(model_dir):
    from zhlora.models.loading import load_model
    from zhlora.training.lora import apply_lora, build_lora_config

    torch.manual_seed(0)
    model = load_model(model_dir, torch_dtype="float32")
    model.set_attn_implementation("sdpa")
    config = build_lora_config(8, 16, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                               False, False, False)  # random A and B: every adapter weight gets a gradient
    model = apply_lora(model, config)
    model.train()
    return model


def _loss_and_grads(model, batch, layout):
    from zhlora.training.loop import packed_forward

    model.zero_grad(set_to_none=True)
    loss_sum, count = packed_forward(model, batch, layout, torch.float32, "cpu")
    loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss_sum.detach(), count, grads


def test_row_bounds_from_position_resets():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    assert row_bounds(positions).tolist() == [0, 3, 5, 6, 10]


def test_segment_attention_gives_the_block_mask_loss_and_gradients(tiny_model_dir):
    from zhlora.training.loop import attention_layout

    model = _lora_model(tiny_model_dir)
    rows = _rows(model.config.vocab_size, (37, 20, 51, 9, 30, 1))
    bins = [[rows[0], rows[1], rows[3]], [rows[2], rows[4], rows[5]]]  # unequal bins: the sdpa batch has padding
    masked = _loss_and_grads(model, collate_bins(bins, pad_token_id=0), "sdpa")
    use_segment_attention(model)
    assert attention_layout(model.config._attn_implementation) == "segments"
    segments = _loss_and_grads(model, collate_bins(bins, pad_token_id=0, flatten=True), "segments")

    assert segments[1] == masked[1] == sum(int((labels[1:] != IGNORE_INDEX).sum()) for _, labels in rows)
    torch.testing.assert_close(segments[0], masked[0], rtol=1e-6, atol=1e-5)
    assert segments[2].keys() == masked[2].keys() and len(masked[2]) > 0
    for name, grad in masked[2].items():
        assert grad.abs().max() > 0, name
        # float32 summation order differs (other matmul shapes): within 1e-5 of the tensor's largest entry
        torch.testing.assert_close(segments[2][name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()), msg=name)
    # negative control: the flattened rows as one causal sequence (no boundaries) give another loss
    with torch.no_grad():
        flat = collate_bins(bins, pad_token_id=0, flatten=True)
        leaky = model(input_ids=flat.input_ids, position_ids=flat.position_ids).logits[0]
        leaky_sum = torch.nn.functional.cross_entropy(leaky, flat.targets[0], ignore_index=IGNORE_INDEX, reduction="sum")
    assert abs(float(leaky_sum) - float(masked[0])) > 1e-2


def test_without_row_bounds_it_is_plain_sdpa(tiny_model_dir):
    """Evaluation on the training model (padded batches, 2-D mask, no boundaries) is unchanged."""
    from zhlora.models.loading import load_model

    model = load_model(tiny_model_dir, torch_dtype="float32")
    model.set_attn_implementation("sdpa")
    model.eval()
    ids = torch.tensor([[5, 9, 11, 4, 7, 8], [0, 0, 6, 12, 13, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        use_segment_attention(model)
        assert model.config._attn_implementation == SEGMENTS
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_segment_attention_takes_one_flattened_row(tiny_model_dir):
    from zhlora.models.loading import load_model

    model = load_model(tiny_model_dir, torch_dtype="float32")
    use_segment_attention(model)
    ids = torch.tensor([[5, 9, 11], [4, 7, 8]])
    with pytest.raises(ValueError, match="one flattened row"):
        model(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 3], dtype=torch.int32))


# ---------------------------------------------------------------------------------------
# Sliding-window layers (Gemma 2/3): packed rows longer than the window
# ---------------------------------------------------------------------------------------
def _tiny_gemma3_lora():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from zhlora.training.lora import apply_lora, build_lora_config

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=256, attn_implementation="sdpa")
    model = Gemma3ForCausalLM(config).to(torch.float32)
    lora = build_lora_config(4, 8, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                             False, False, False)
    model = apply_lora(model, lora)
    model.train()
    return model


def _unpacked_loss_and_grads(model, rows):
    """Each row alone, with transformers' own masks (its sliding-window mask included): the reference."""
    model.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for ids, labels in rows:
        logits = model(input_ids=torch.tensor(ids)[None]).logits[0, :-1]
        total = total + torch.nn.functional.cross_entropy(logits, torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX,
                                                          reduction="sum")
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layout", ["segments", "sdpa"])
def test_packed_rows_longer_than_the_sliding_window_equal_unpacked_rows(layout):
    """Rows of up to 40 tokens with an 8-token window: packing changes neither the loss nor the LoRA gradients."""
    model = _tiny_gemma3_lora()
    rows = _rows(300, (40, 9, 23, 5, 31))
    bins = [[rows[0], rows[1]], [rows[2], rows[3], rows[4]]]
    reference_loss, reference_grads = _unpacked_loss_and_grads(model, rows)
    if layout == "segments":
        use_segment_attention(model)
    loss, count, grads = _loss_and_grads(model, collate_bins(bins, pad_token_id=0, flatten=layout == "segments"),
                                         layout)
    assert count == sum(int((labels[1:] != IGNORE_INDEX).sum()) for _, labels in rows)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-6, atol=1e-5)
    for name, grad in reference_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()), msg=name)


def test_ignoring_the_window_would_be_caught():
    """Negative control: the same packed rows with every layer attending to the whole row give another loss."""
    from zhlora.training.loop import packed_forward

    model = _tiny_gemma3_lora()
    rows = _rows(300, (40, 31))
    reference_loss, _ = _unpacked_loss_and_grads(model, rows)
    model.base_model.model.config.sliding_window = 10_000  # no window anywhere
    with torch.no_grad():
        loss, _ = packed_forward(model, collate_bins([rows], pad_token_id=0), "sdpa", torch.float32, "cpu")
    assert abs(float(loss) - float(reference_loss)) > 1e-3


# ---------------------------------------------------------------------------------------
# The fused output layer of very wide vocabularies (Gemma's 262k)
# ---------------------------------------------------------------------------------------
def test_the_fused_output_layer_gives_the_cross_entropy_and_its_gradient():
    from zhlora.training.loss import fused_linear_token_loss_sum, token_loss_sum

    torch.manual_seed(0)
    weight = torch.randn(5000, 32) * 0.1
    hidden = torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 5000, (300,))
    plain, count = token_loss_sum(hidden @ weight.T, targets)
    (plain_grad,) = torch.autograd.grad(plain, hidden)
    fused, fused_count = fused_linear_token_loss_sum(hidden, weight, targets, chunk=64)
    (fused_grad,) = torch.autograd.grad(fused * 2.0, hidden)  # the outer gradient is applied
    assert count == fused_count == 300
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(fused_grad, 2.0 * plain_grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="frozen weight"):
        fused_linear_token_loss_sum(hidden, weight.requires_grad_(), targets)


@pytest.mark.parametrize("layout", ["segments", "sdpa"])
def test_a_wide_vocabulary_trains_through_the_fused_output_layer_with_the_same_loss_and_gradients(layout, monkeypatch):
    """A tiny Gemma-3 with a 200,000-token vocabulary: packed_forward takes the fused path (no logits kept), and its
    loss and LoRA gradients equal the plain path's."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from zhlora.training import loop
    from zhlora.training.lora import apply_lora, build_lora_config

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=loop.FUSED_HEAD_MIN_VOCAB, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                              sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=256, attn_implementation="sdpa")
    model = apply_lora(Gemma3ForCausalLM(config), build_lora_config(4, 8, 0.0, ["q_proj", "v_proj", "down_proj"],
                                                                     False, False, False))
    model.train()
    assert loop.fused_head_weight(model) is not None
    rows = _rows(1000, (30, 12, 21))
    if layout == "segments":
        use_segment_attention(model)
    batch = collate_bins([rows], pad_token_id=0, flatten=layout == "segments")
    fused = _loss_and_grads(model, batch, layout)
    monkeypatch.setattr(loop, "fused_head_weight", lambda model: None)
    plain = _loss_and_grads(model, batch, layout)
    assert fused[1] == plain[1]
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-6, atol=1e-4)
    for name, grad in plain[2].items():
        torch.testing.assert_close(fused[2][name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()), msg=name)


def test_narrower_vocabularies_and_trained_heads_keep_the_plain_output_layer(tiny_model_dir):
    from zhlora.models.loading import load_model
    from zhlora.training import loop

    model = load_model(tiny_model_dir, torch_dtype="float32")
    assert loop.fused_head_weight(model) is None  # 1,000-odd tokens
