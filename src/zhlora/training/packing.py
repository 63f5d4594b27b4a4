"""Packing: many short training rows into few full sequences, with no attention across rows.

BELLE rows are short (median ~200 tokens) with a long tail, so a padded random batch spends
most of its compute on pad tokens. zhlora instead packs rows into bins of at most
``max_seq_length`` tokens once (best-fit decreasing: the pad fraction is near zero), shuffles
the bins every epoch with a permutation derived from ``(seed, epoch)`` only (so a resumed run
sees exactly the same order), and turns each micro-batch of bins into tensors where:

- ``input_ids`` are the rows' tokens concatenated, bin after bin;
- ``targets`` are next-token labels shifted *within* each row (the last token of a row
  predicts nothing, so no row learns to predict the next row's first token);
- ``position_ids`` restart at 0 for every row, so RoPE sees each row as it would alone;
- ``segment_ids`` number the rows, giving the block-diagonal causal mask
  (:func:`block_causal_mask`) for sdpa/eager attention, while flash-attention's varlen path
  reads the boundaries from the ``position_ids`` resets of one flattened row.

Example: rows of 3 and 2 tokens packed into a bin of 6 give
``segment_ids = [0, 0, 0, 1, 1, 2]`` (the pad tail is its own segment),
``position_ids = [0, 1, 2, 0, 1, 0]`` and ``targets = [l1, l2, -100, l1', -100, -100]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from zhlora.data.preprocess import IGNORE_INDEX  # also the value of positions that are not scored: row end, pad


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group row indices into bins of at most ``capacity`` tokens (best-fit decreasing).

    Rows are placed longest first, each into the fullest bin that still has room; this
    leaves almost no free space when most rows are much shorter than ``capacity``. The
    result depends only on ``lengths`` (ties broken by row index), never on a seed.

    Runs in O(rows x capacity / 64): open bins are kept in buckets by free space, and a
    Python int with one bit per free-space value finds the best bucket in one shift.

    Raises:
        ValueError: when a row is longer than ``capacity`` or has no tokens.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    bins: list[list[int]] = []
    by_free: list[list[int]] = [[] for _ in range(capacity + 1)]  # free tokens -> open bin ids
    nonempty = 0  # bit r set <=> by_free[r] is non-empty
    for index in order:
        length = int(lengths[index])
        if not 0 < length <= capacity:
            raise ValueError(f"row {index} has {length} tokens; rows must have 1..{capacity} tokens")
        candidates = nonempty >> length
        if candidates:
            free = length + (candidates & -candidates).bit_length() - 1
            bin_id = by_free[free].pop()
            if not by_free[free]:
                nonempty &= ~(1 << free)
        else:
            free, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(index)
        left = free - length
        if left > 0:
            by_free[left].append(bin_id)
            nonempty |= 1 << left
    return bins


def epoch_permutation(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the bins in ``epoch``: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def micro_batch_bins(
    order: np.ndarray, step_in_epoch: int, micro_step: int, rank: int, world_size: int,
    batch_size: int, accumulation_steps: int,
) -> list[int]:
    """Bin ids of one process's micro-batch within an optimizer step.

    Optimizer step ``s`` consumes ``world_size x accumulation_steps x batch_size`` consecutive
    bins of the epoch's ``order``; micro-step ``m`` of process ``r`` takes the ``batch_size``
    bins starting at ``(m x world_size + r) x batch_size``. The epoch's last step wraps around to
    the start of the order (as accelerate's ``even_batches`` does), so every step has the same
    shape on every process.
    """
    per_step = world_size * accumulation_steps * batch_size
    start = step_in_epoch * per_step + (micro_step * world_size + rank) * batch_size
    return [int(order[(start + j) % len(order)]) for j in range(batch_size)]


@dataclass
class PackedBatch:
    """One micro-batch of packed rows as model inputs (all tensors ``[batch, tokens]``)."""

    input_ids: torch.Tensor
    targets: torch.Tensor  # next-token label of each position, IGNORE_INDEX where unscored
    position_ids: torch.Tensor
    segment_ids: torch.Tensor  # row number within the bin; the pad tail is one more segment
    real_tokens: int  # tokens of real rows (the rest is padding)

    @property
    def total_tokens(self) -> int:
        """Positions the model computes, padding included."""
        return self.input_ids.numel()

    @property
    def target_tokens(self) -> int:
        """Positions that contribute to the loss."""
        return int((self.targets != IGNORE_INDEX).sum())


def collate_bins(
    bins: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], pad_token_id: int, flatten: bool = False
) -> PackedBatch:
    """Build a :class:`PackedBatch` from bins of ``(input_ids, labels)`` rows.

    Each bin becomes one tensor row, right-padded to the longest bin of the micro-batch. With
    ``flatten=True`` all bins are concatenated into a single row with no padding at all (the
    layout flash-attention's varlen kernels take, boundaries given by ``position_ids``).
    ``labels`` are aligned with ``input_ids`` (``labels[i]`` is the label of token ``i``, -100 on
    prompt tokens), as :mod:`zhlora.data` writes them; the shift to next-token targets happens here.
    """
    if flatten:
        bins = [[row for bin_rows in bins for row in bin_rows]]
    width = max(sum(len(ids) for ids, _ in bin_rows) for bin_rows in bins)
    shape = (len(bins), width)
    input_ids = np.full(shape, pad_token_id, dtype=np.int64)
    targets = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    segment_ids = np.zeros(shape, dtype=np.int64)
    real = 0
    for b, bin_rows in enumerate(bins):
        start = 0
        for segment, (ids, labels) in enumerate(bin_rows):
            end = start + len(ids)
            input_ids[b, start:end] = ids
            targets[b, start : end - 1] = labels[1:]
            position_ids[b, start:end] = np.arange(len(ids))
            segment_ids[b, start:end] = segment
            start = end
        position_ids[b, start:] = np.arange(width - start)
        segment_ids[b, start:] = len(bin_rows)
        real += start
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        targets=torch.from_numpy(targets),
        position_ids=torch.from_numpy(position_ids),
        segment_ids=torch.from_numpy(segment_ids),
        real_tokens=real,
    )


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None,
                      sliding_window: int | None = None) -> torch.Tensor:
    """The ``[batch, 1, tokens, tokens]`` attention mask of packed rows.

    Position ``i`` may attend to ``j`` when ``j <= i`` and both are in the same segment, and, with a
    ``sliding_window`` (Gemma's local layers), ``i - j < sliding_window`` as transformers' own
    sliding-window mask has it. With ``dtype=None`` the mask is boolean (True = attend), the form
    sdpa takes; with a float ``dtype`` it is additive (0 or the dtype's minimum), the form eager
    attention adds to its scores. transformers passes a 4-D mask to the attention layers unchanged.
    """
    width = segment_ids.shape[-1]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()
    if sliding_window is not None:
        causal = causal & ~torch.ones_like(causal).tril(-sliding_window)
    allowed = (same_segment & causal)[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def pad_fraction(real_tokens: int, total_tokens: int) -> float:
    """Share of computed positions that are padding (0 = no waste)."""
    return 0.0 if total_tokens == 0 else 1.0 - real_tokens / total_tokens
