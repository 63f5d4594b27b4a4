"""Which tokens of a subject's prompts are shared, for any tokenizer.

Every question of a subject starts with the same description and shots, but the token ids of
that shared *text* are not always a prefix of each question's token ids. A byte-level BPE
tokenizer (SmolLM2, Qwen, Llama-3) encodes the prefix's trailing ``"\\n\\n"`` alone as one token
(``[..., 389, 1116]``) but as two when a question follows (``[..., 389, 198, 198, 14413]``), and
a tokenizer may merge ``"\\n\\n"`` with the question's first word. So the shared part is found in
token space: the longest common prefix of the prefix text's ids and each item's ids. Stopping at
the prefix text (never following the items further, even where their first words agree) keeps
the split point a property of the subject, not of which questions happen to be in the batch.

The engine computes the key/value cache of those tokens once and scores each item from there;
since the item's own tokens start with exactly those ids, the log-likelihoods are those of
scoring the full prompt (as lm-eval tokenizes it), up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class PrefixUse:
    """How many items were scored from a shared prefix, and how long it was (tokens).

    ``items`` counts every item offered; ``shared_items`` those whose every forward-pass row
    continued from the shared key/value cache; ``shared_tokens`` sums the prefix length over them.
    """

    items: int = 0
    shared_items: int = 0
    shared_tokens: int = 0

    def add(self, other: PrefixUse) -> None:
        """Accumulate another unit's counts (a benchmark's total over its subjects)."""
        self.items += other.items
        self.shared_items += other.shared_items
        self.shared_tokens += other.shared_tokens

    @property
    def rate(self) -> float:
        """Fraction of items scored from the shared prefix (1.0 when there were none)."""
        return self.shared_items / self.items if self.items else 1.0

    @property
    def mean_shared_tokens(self) -> float:
        """Mean prefix length (tokens) over the items that used it."""
        return self.shared_tokens / self.shared_items if self.shared_items else 0.0

    def as_dict(self) -> dict:
        return {"items": self.items, "shared_items": self.shared_items, "rate": round(self.rate, 4),
                "mean_shared_tokens": round(self.mean_shared_tokens, 1)}


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading positions where ``a`` and ``b`` hold the same token id."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shared_prefix_length(prefix_ids: Sequence[int], rows: Sequence[tuple[Sequence[int], int]]) -> int:
    """The prefix length (tokens) that saves the most computation over ``rows``.

    ``rows`` are ``(tokens, first_scored_position)`` pairs; a row can continue from a prefix of
    ``n`` tokens when its first ``n`` ids equal ``prefix_ids[:n]`` and ``n <= first_scored_position``
    (the positions that predict answer tokens must be computed from the row's own tokens). Each
    row's usable length is its common prefix with ``prefix_ids``, capped so; the chosen ``n``
    maximises ``n x (rows usable at n)`` among those lengths, so one odd item (a truncated
    context, a question that merges differently) does not shorten the prefix of all the others.
    Returns 0 when fewer than two rows could share anything (a prefix pass plus suffix passes
    would cost more than one full pass).

    Example (byte-level BPE): prefix ids ``[1, 5, 9, 1116]`` and rows ``([1, 5, 9, 198, 198, 7], 5)``
    and ``([1, 5, 9, 198, 198, 8], 5)`` -> 3.
    """
    usable = sorted((min(common_prefix_length(prefix_ids, tokens), first) for tokens, first in rows), reverse=True)
    best, best_saving = 0, 0
    for count, n in enumerate(usable, start=1):
        if count >= 2 and n * count > best_saving:
            best, best_saving = n, n * count
    return best
