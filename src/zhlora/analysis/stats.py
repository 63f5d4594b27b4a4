"""Paired statistics for base-vs-tuned comparisons on the same items.

Every item was answered by both models, so each comparison is *paired*: the information is
in the discordant items, the ones one model got right and the other wrong. Formulas and the
verdict rule are written out in docs/analysis.md.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

VERDICTS = ("improved", "forgot", "no significant change")


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of paired outcomes: a = both right, b = right->wrong, c = wrong->right, d = both wrong."""

    a: int
    b: int
    c: int
    d: int

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d

    @property
    def delta_points(self) -> float:
        """Tuned minus base accuracy in percentage points: 100 (c - b) / n."""
        return 100.0 * (self.c - self.b) / self.n if self.n else 0.0


def paired_counts(base_correct: Sequence[bool], tuned_correct: Sequence[bool]) -> PairedCounts:
    """Count the four paired outcomes of two equally long right/wrong vectors (same item order)."""
    base = np.asarray(base_correct, dtype=bool)
    tuned = np.asarray(tuned_correct, dtype=bool)
    if base.shape != tuned.shape:
        raise ValueError(f"paired vectors differ in length: {base.shape} vs {tuned.shape}")
    return PairedCounts(
        a=int(np.sum(base & tuned)),
        b=int(np.sum(base & ~tuned)),
        c=int(np.sum(~base & tuned)),
        d=int(np.sum(~base & ~tuned)),
    )


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c.

    Under "no change" each discordant item is equally likely to go either way, so
    min(b, c) ~ Binomial(b + c, 1/2) and p = min(1, 2 P[X <= min(b, c)]). Computed with exact
    integers, then one division; p = 1 when there are no discordant items.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0), then C(n, k+1) = C(n, k) (n - k) / (k + 1), exact in integers
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    # Exact rational arithmetic: 2**n overflows a float once n passes ~1000 discordant items.
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control), in the input order.

    With the p-values sorted ascending p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    max_{j <= i} min(1, (m - j + 1) p_(j)). Rejecting where adjusted p < alpha controls the
    family-wise error rate at alpha under any dependence between the tests.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def stable_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a row name, so a row's bootstrap does not depend on
    which other rows are computed or in what order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def bootstrap_delta_samples(counts: PairedCounts, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Paired-bootstrap replicates of the accuracy change, in points (array of n_resamples).

    Resampling n items with replacement and recomputing mean(tuned) - mean(base) only depends
    on how many drawn items are discordant (D) and how many of those went wrong->right (C):
    the change is 100 (2C - D) / n. Under index resampling the 2x2 cell counts are
    Multinomial(n; a/n, b/n, c/n, d/n), so D ~ Binomial(n, (b + c)/n) and, given D,
    C ~ Binomial(D, c/(b + c)). Drawing those two counts gives exactly the distribution of
    index resampling at O(n_resamples) cost instead of O(n_resamples * n).
    """
    n = counts.n
    if n == 0:
        raise ValueError("cannot bootstrap an empty set of items")
    discordant = counts.b + counts.c
    if discordant == 0:
        return np.zeros(n_resamples)
    drawn_discordant = rng.binomial(n, discordant / n, size=n_resamples)
    drawn_improved = rng.binomial(drawn_discordant, counts.c / discordant)
    return 100.0 * (2 * drawn_improved - drawn_discordant) / n


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap replicates."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def verdict(delta: float, p_adjusted: float, significance: float) -> str:
    """ "improved" / "forgot" when the Holm-adjusted p is below ``significance``, else no change."""
    if p_adjusted < significance and delta > 0:
        return "improved"
    if p_adjusted < significance and delta < 0:
        return "forgot"
    return "no significant change"


def bootstrap_perplexity_change(
    base_nll: Sequence[float],
    tuned_nll: Sequence[float],
    n_tokens: Sequence[int],
    n_resamples: int,
    rng: np.random.Generator,
    chunk: int = 1000,
) -> np.ndarray:
    """Replicates of tuned/base perplexity − 1, resampling documents with replacement.

    Per document: summed negative log-likelihood (nats) of each model over the same
    ``n_tokens`` tokens. A replicate's perplexity ratio is exp((Σ tuned − Σ base) / Σ tokens)
    over the drawn documents (token-weighted, as the probes' perplexity is).
    """
    difference = np.asarray(tuned_nll, dtype=float) - np.asarray(base_nll, dtype=float)
    tokens = np.asarray(n_tokens, dtype=float)
    n = len(tokens)
    if n == 0 or difference.shape != tokens.shape:
        raise ValueError("need one base and one tuned loss per document, and at least one document")
    replicates = []
    for start in range(0, n_resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        replicates.append(np.expm1(difference[index].sum(axis=1) / tokens[index].sum(axis=1)))
    return np.concatenate(replicates)
