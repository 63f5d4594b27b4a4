"""Seeded, streaming selection of the BELLE training sample and its disjoint held-out slice."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def reservoir_sample(items: Iterable[T], k: int, rng: random.Random) -> tuple[list[T], int]:
    """Draw ``k`` items uniformly without replacement from a stream of unknown length.

    Algorithm R: memory holds ``k`` items, whatever the stream's length (BELLE's 2M rows are
    read once and never held at once). Returns ``(sample, number of items seen)``; the
    sample is in no particular order.
    """
    sample: list[T] = []
    seen = 0
    for item in items:
        if seen < k:
            sample.append(item)
        else:
            slot = rng.randrange(seen + 1)
            if slot < k:
                sample[slot] = item
        seen += 1
    return sample, seen


def train_heldout_sizes(available: int, train_size: int, heldout_size: int) -> tuple[int, int]:
    """How many rows go to training and to the held-out slice when ``available`` rows exist.

    With enough rows this is ``(train_size, heldout_size)``. With fewer, the held-out slice
    shrinks to a tenth of the rows (at least 1 when one was asked for, at most
    ``heldout_size``) and training takes the rest, up to ``train_size``.
    """
    if available >= train_size + heldout_size:
        return train_size, heldout_size
    heldout = min(heldout_size, max(1, available // 10)) if heldout_size > 0 and available > 1 else 0
    return min(train_size, available - heldout), heldout


def sample_train_heldout(
    items: Iterable[T], train_size: int, heldout_size: int, seed: int
) -> tuple[list[T], list[T], int]:
    """Draw a training sample and a disjoint held-out slice from a stream, reproducibly.

    One reservoir of ``train_size + heldout_size`` items is drawn with ``random.Random(seed)``
    and shuffled; the held-out slice is its head and training the rest, so the two never
    share a row. Returns ``(train, heldout, number of items in the stream)``.
    """
    rng = random.Random(seed)
    sample, seen = reservoir_sample(items, train_size + heldout_size, rng)
    rng.shuffle(sample)
    n_train, n_heldout = train_heldout_sizes(len(sample), train_size, heldout_size)
    return sample[n_heldout:n_heldout + n_train], sample[:n_heldout], seen
