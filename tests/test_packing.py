"""Packing: bins, data order, tensors, masks, and the proof that packing changes no token's loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zhlora.data.preprocess import IGNORE_INDEX
from zhlora.training.packing import (
    block_causal_mask,
    collate_bins,
    epoch_permutation,
    micro_batch_bins,
    pack_rows,
    pad_fraction,
)


def belle_like_lengths(n: int, seed: int = 0, max_len: int = 1024) -> np.ndarray:
    """Lognormal token lengths, median ~200, long tail cut at ``max_len`` (BELLE's shape)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=np.log(200), sigma=0.7, size=n).astype(int), 8, max_len)


def test_pack_rows_places_every_row_once_within_capacity():
    lengths = belle_like_lengths(3000)
    bins = pack_rows(lengths, 1024)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 1024


def test_pack_rows_leaves_almost_no_padding_on_belle_like_lengths():
    lengths = belle_like_lengths(5000, seed=1)
    bins = pack_rows(lengths, 1024)
    waste = pad_fraction(int(lengths.sum()), len(bins) * 1024)
    assert waste < 0.01, f"{waste:.3%} of the packed positions are padding"
    # a padded random batch of 8 wastes far more: the baseline packing is measured against
    rng = np.random.default_rng(0)
    batches = rng.permutation(len(lengths))[: 8 * 600].reshape(-1, 8)
    padded_waste = 1 - lengths[batches].sum() / (lengths[batches].max(axis=1).sum() * 8)
    assert padded_waste > 0.3


def test_pack_rows_is_best_fit_and_deterministic():
    # longest first: 6 and 5 open bins (4 and 5 free); 4 fills the fullest bin it fits (6's), 2 joins 5
    assert pack_rows([6, 4, 2, 5], 10) == [[0, 1], [3, 2]]
    lengths = belle_like_lengths(500, seed=2)
    assert pack_rows(lengths, 1024) == pack_rows(list(lengths), 1024)


@pytest.mark.parametrize("bad", [[0, 3], [11], [-1]])
def test_pack_rows_rejects_rows_that_cannot_fit(bad):
    with pytest.raises(ValueError, match="tokens"):
        pack_rows(bad, 10)


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a = epoch_permutation(100, seed=7, epoch=3)
    assert sorted(a) == list(range(100))
    assert np.array_equal(a, epoch_permutation(100, seed=7, epoch=3))
    assert not np.array_equal(a, epoch_permutation(100, seed=7, epoch=4))
    assert not np.array_equal(a, epoch_permutation(100, seed=8, epoch=3))


def test_micro_batches_cover_the_epoch_once_across_processes_and_wrap_at_the_end():
    order = epoch_permutation(10, seed=0, epoch=0)
    world, batch, accum = 2, 2, 2  # 8 bins per step: 2 steps per epoch, the second wraps
    seen = []
    for step in range(2):
        step_bins = [
            micro_batch_bins(order, step, micro, rank, world, batch, accum)
            for micro in range(accum) for rank in range(world)
        ]
        flat = [b for part in step_bins for b in part]
        assert len(flat) == len(set(flat)) == 8  # no bin twice within a step
        seen += flat
    assert set(seen[:10]) == set(range(10))  # every bin in the first 10 slots
    assert seen[10:] == [int(b) for b in order[:6]]  # the last step wraps to the start


def test_collate_shifts_targets_within_rows_and_restarts_positions():
    row_a = (np.array([5, 6, 7]), np.array([IGNORE_INDEX, 6, 7]))
    row_b = (np.array([8, 9]), np.array([8, 9]))
    row_c = (np.array([3, 4]), np.array([IGNORE_INDEX, 4]))
    batch = collate_bins([[row_a, row_b], [row_c]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    # the last token of a row predicts nothing: row a never learns to predict row b's first token
    assert batch.targets.tolist() == [[6, 7, -100, 9, -100], [4, -100, -100, -100, -100]]  # PyTorch's ignore_index
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch.segment_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert (batch.real_tokens, batch.total_tokens, batch.target_tokens) == (7, 10, 4)
    flat = collate_bins([[row_a, row_b], [row_c]], pad_token_id=0, flatten=True)
    assert flat.input_ids.tolist() == [[5, 6, 7, 8, 9, 3, 4]]
    assert flat.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert flat.total_tokens == flat.real_tokens == 7


def test_block_causal_mask_bool_and_additive():
    segments = torch.tensor([[0, 0, 1, 1, 1]])
    allowed = block_causal_mask(segments)
    assert allowed.shape == (1, 1, 5, 5) and allowed.dtype == torch.bool
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed[0, 0], expected)
    additive = block_causal_mask(segments, torch.float32)
    assert torch.equal(additive[0, 0] == 0, expected)
    assert additive.min() == torch.finfo(torch.float32).min


def _row_token_losses(model, ids: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """Per-token losses of one row run alone, the standard causal way (no mask, no positions)."""
    logits = model(input_ids=torch.as_tensor(ids)[None]).logits[0]
    targets = torch.as_tensor(np.append(labels[1:], IGNORE_INDEX))
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")[targets != IGNORE_INDEX]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_gives_each_token_the_loss_it_has_alone(tiny_model_dir, attention):
    from zhlora.models.loading import load_model
    from zhlora.training.loop import packed_forward, packed_inputs

    torch.manual_seed(0)
    model = load_model(tiny_model_dir, torch_dtype="float32")
    model.set_attn_implementation(attention)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    rows = []
    for length in (37, 20, 51, 9, 30):
        ids = rng.integers(3, vocab, size=length)
        labels = ids.copy()
        labels[: length // 3] = IGNORE_INDEX  # a prompt
        rows.append((ids, labels))
    bins = [[rows[0], rows[1], rows[3]], [rows[2], rows[4]]]
    batch = collate_bins(bins, pad_token_id=0)

    with torch.no_grad():
        alone = torch.cat([_row_token_losses(model, ids, labels) for bin_rows in bins for ids, labels in bin_rows])
        logits = model(**packed_inputs(batch, attention, torch.float32, "cpu")).logits
        packed = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        packed = packed[batch.targets.flatten() != IGNORE_INDEX]
        loss_sum, count = packed_forward(model, batch, attention, torch.float32, "cpu")
        # negative control: the same packed rows with the boundary information left out
        leaky = model(input_ids=batch.input_ids).logits
    assert count == len(alone) == len(packed)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_sum, alone.sum(), rtol=1e-5, atol=1e-3)
    # logits only at the scored positions: the same loss as from the full logits
    torch.testing.assert_close(loss_sum, packed.sum(), rtol=1e-6, atol=1e-5)
    leaky_losses = F.cross_entropy(leaky.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    assert (leaky_losses[batch.targets.flatten() != IGNORE_INDEX] - alone).abs().max() > 1e-3


def test_packed_loss_is_the_same_where_transformers_cannot_mask_logits(tiny_model_dir, monkeypatch):
    """Older transformers 5.x releases take no boolean ``logits_to_keep``: the fallback (every logit,
    the scored ones picked after) gives the same summed loss."""
    from zhlora.models.loading import load_model
    from zhlora.training import loop

    model = load_model(tiny_model_dir, torch_dtype="float32")
    rng = np.random.default_rng(1)
    rows = []
    for length in (25, 40, 12):
        ids = rng.integers(3, model.config.vocab_size, size=length)
        labels = ids.copy()
        labels[: length // 2] = IGNORE_INDEX
        rows.append((ids, labels))
    batch = collate_bins([[rows[0], rows[2]], [rows[1]]], pad_token_id=0)
    with torch.no_grad():
        masked = loop.packed_forward(model, batch, "sdpa", torch.float32, "cpu")
        monkeypatch.setattr(loop, "_masked_logits_supported", lambda: False)
        full = loop.packed_forward(model, batch, "sdpa", torch.float32, "cpu")
    assert masked[1] == full[1] == sum(int((labels[1:] != IGNORE_INDEX).sum()) for _, labels in rows)
    torch.testing.assert_close(masked[0], full[0], rtol=1e-6, atol=1e-5)
