"""Paired statistics for base-vs-tuned comparisons on the same items.

Every item was answered by both models, so each comparison is *paired*: the information is
in the discordant items, the ones one model got right and the other wrong. Formulas and the
verdict rule are written out in docs/analysis.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

import numpy as np

# A bootstrap over fewer documents than this says more about the documents drawn than about the
# model: the perplexity change is then reported as "not resolved" instead of with an interval.
MIN_DOCUMENTS = 20


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


def _normal_quantile(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence for a standard normal Z (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def tango_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: (tuned − base accuracy) = ``delta`` (a fraction in (−1, 1)).

    ``b`` = right→wrong, ``c`` = wrong→right items out of ``n`` pairs. With q the maximum
    likelihood estimate of P(right→wrong) under H0 (the positive root of
    2n q² + [(2n − c + b) δ − (b + c)] q − b δ (1 − δ) = 0), the statistic is
    (c − b − n δ) / sqrt(n (2q + δ (1 − δ))). Tango (1998), Statistics in Medicine 17:891-908.
    """
    w = (2 * n - c + b) * delta - (b + c)
    q = (-w + math.sqrt(max(w * w + 8.0 * n * b * delta * (1.0 - delta), 0.0))) / (4.0 * n)
    variance = n * (2.0 * q + delta * (1.0 - delta))
    if variance <= 0.0:  # only at delta = 0 with no discordant pairs: the observed value itself
        return 0.0
    return (c - b - n * delta) / math.sqrt(variance)


def _bisect(function, low: float, high: float, iterations: int = 200) -> float:
    """The root of a function that changes sign once between ``low`` and ``high``."""
    f_low = function(low)
    for _ in range(iterations):
        middle = (low + high) / 2.0
        if (function(middle) > 0) == (f_low > 0):
            low, f_low = middle, function(middle)
        else:
            high = middle
    return (low + high) / 2.0


def paired_difference_interval(counts: PairedCounts, confidence: float) -> tuple[float, float]:
    """Tango's score interval for tuned − base accuracy, in points (never zero-width when n > 0).

    The interval is every δ whose score test (:func:`tango_score`) is not rejected at level
    1 − ``confidence``: the two roots of |T(δ)| = z on either side of the observed change,
    found by bisection (T decreases in δ). With no discordant pairs it is
    ±100 z² / (n + z²) — e.g. ±27.8 points at n = 10, 95% — where the percentile bootstrap
    collapses to [0, 0]. Why this interval (and not Newcombe's hybrid score): docs/analysis.md.
    """
    n, b, c = counts.n, counts.b, counts.c
    if n == 0:
        raise ValueError("cannot compute an interval over no items")
    z = _normal_quantile(confidence)
    observed = (c - b) / n
    edge = 1.0 - 1e-12
    low = -edge if tango_score(b, c, n, -edge) <= z else _bisect(lambda d: tango_score(b, c, n, d) - z, -edge, observed)
    high = edge if tango_score(b, c, n, edge) >= -z else _bisect(lambda d: tango_score(b, c, n, d) + z, observed, edge)
    # An observed change of ±100% sits on the edge of the search range: keep it inside its interval.
    return 100.0 * min(low, observed), 100.0 * max(high, observed)


def combined_mean_interval(estimates: Sequence[float], intervals: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Interval of the unweighted mean of independent estimates from their own intervals (MOVER).

    Zou & Donner (2008), Statistics in Medicine 27:1693-1702: for θ = mean(θ_k),
    L = θ − sqrt(Σ (θ_k − l_k)²) / K and U = θ + sqrt(Σ (u_k − θ_k)²) / K. Each side keeps the
    asymmetry of its parts, and the result is never narrower than zero unless every part is.
    """
    k = len(estimates)
    if k == 0 or len(intervals) != k:
        raise ValueError("need one interval per estimate, and at least one estimate")
    mean = sum(estimates) / k
    below = math.sqrt(sum((e - low) ** 2 for e, (low, _) in zip(estimates, intervals))) / k
    above = math.sqrt(sum((high - e) ** 2 for e, (_, high) in zip(estimates, intervals))) / k
    return mean - below, mean + above


def mcnemar_power(n: int, discordant: float, delta: float, significance: float) -> float:
    """Approximate power of the two-sided McNemar test to detect a change ``delta`` (a fraction).

    Connor (1987), Biometrics 43:207-211: with ψ the share of discordant pairs,
    power = Φ((|δ| sqrt(n) − z_{α/2} sqrt(ψ)) / sqrt(ψ − δ²)). ψ can be no smaller than |δ|
    (a change of δ needs at least n|δ| flipped items), so ψ is raised to |δ| when below it.
    """
    psi = max(discordant, abs(delta))
    z_alpha = _normal_quantile(1.0 - significance)
    spread = math.sqrt(max(psi - delta * delta, 1e-12))
    return NormalDist().cdf((abs(delta) * math.sqrt(n) - z_alpha * math.sqrt(psi)) / spread)


def minimum_detectable_change(n: int, discordant: float, significance: float = 0.05, power: float = 0.8) -> float:
    """Smallest change in points that a two-sided McNemar test on ``n`` items finds with ``power``.

    Assumes the share of items that flip (either way) is ``discordant`` (the one observed in
    the row), but at least the change itself; see :func:`mcnemar_power` and docs/analysis.md.
    Returns 100 when even a change of 100 points would be missed.
    """
    if n <= 0:
        raise ValueError("need at least one item")
    if mcnemar_power(n, discordant, 1.0, significance) < power:
        return 100.0
    return 100.0 * _bisect(lambda d: mcnemar_power(n, discordant, d, significance) - power, 1e-9, 1.0)


def stable_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a row name, so a row's bootstrap does not depend on
    which other rows are computed or in what order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


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


def bootstrap_document_totals(
    columns: dict[str, Sequence[float]], n_resamples: int, rng: np.random.Generator, chunk: int = 1000
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of per-document totals, resampling documents with replacement.

    ``columns`` maps a name to one number per document (e.g. base and tuned summed negative
    log-likelihood in nats, token, byte, character or word counts); every column is resampled
    with the same document indices, so ratios of the returned totals are paired replicates
    (e.g. tuned/base perplexity − 1 = exp((Σ tuned − Σ base) / Σ tokens) − 1 over the drawn
    documents). Returns name -> array of ``n_resamples`` totals.
    """
    arrays = {name: np.asarray(values, dtype=float) for name, values in columns.items()}
    lengths = {len(values) for values in arrays.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("need the same number (at least one) of values per document in every column")
    n = lengths.pop()
    totals: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
    for start in range(0, n_resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        for name, values in arrays.items():
            totals[name].append(values[index].sum(axis=1))
    return {name: np.concatenate(parts) for name, parts in totals.items()}


def tango_noninferiority_p(counts: PairedCounts, margin_points: float) -> float:
    """One-sided p-value of Tango's score test of H0: tuned − base ≤ −``margin_points`` (accuracy fell
    by the margin or more) against H1: it fell by less (non-inferiority; Tango 1998, the test the
    paired score interval inverts). p < (1 − confidence)/2 exactly when the interval's lower end
    lies above −margin.
    """
    if counts.n == 0:
        raise ValueError("cannot test over no items")
    statistic = tango_score(counts.b, counts.c, counts.n, -margin_points / 100.0)
    return 1.0 - NormalDist().cdf(statistic)


def margin_verdict(harm_low: float, harm_high: float, margin: float) -> str:
    """Where an interval of *harm* (forgetting, larger = worse) lies against the allowed ``margin``.

    ``"within"`` when its worst end stays inside the margin (harm_high < margin: non-inferiority
    shown), ``"beyond"`` when all of it lies past the margin (harm_low > margin: forgetting beyond
    the budget shown), else ``"inconclusive"``.
    """
    if harm_high < margin:
        return "within"
    if harm_low > margin:
        return "beyond"
    return "inconclusive"


def noninferiority_items_needed(delta: float, discordant: float, margin: float, confidence: float,
                                power: float = 0.8) -> int | None:
    """Paired items Tango's non-inferiority test at this margin needs to decide with ``power``, if the
    true change and share of flipped items were the observed ones.

    ``delta`` (tuned − base), ``margin`` and ``discordant`` (ψ, the share of flipped items) are
    fractions. The one-sided test at α = (1 − confidence)/2 decides "within" when δ > −m and
    "beyond" when δ < −m. Nam (1997, Biometrics 53:1422-1430), for the score test:
    n = (z_{1−α} sqrt(V0) + z_{power} sqrt(V1))² / (δ + m)², with V1 = ψ − δ² the per-item variance
    at the truth and V0 = 2q̃ + δ0(1 − δ0) the score test's variance at δ0 = −m, q̃ the limit of the
    restricted maximum-likelihood P(right→wrong) (:func:`tango_score`'s root with shares for
    counts). With no flips observed (ψ = 0) this is the n whose interval, ±z²/(n + z²), fits inside
    the margin. None when δ = −m: no number of items decides a change that sits on the margin.
    """
    null = -margin
    distance = abs(delta - null)
    if distance < 1e-12:
        return None
    psi = max(discordant, abs(delta))
    p10, p01 = (psi - delta) / 2.0, (psi + delta) / 2.0  # right->wrong, wrong->right shares
    w = (2.0 - p01 + p10) * null - (p10 + p01)
    q = (-w + math.sqrt(max(w * w + 8.0 * p10 * null * (1.0 - null), 0.0))) / 4.0
    variance_null = max(2.0 * q + null * (1.0 - null), 0.0)
    variance_truth = max(psi - delta * delta, 0.0)
    z_alpha = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    z_power = NormalDist().inv_cdf(power)
    root = z_alpha * math.sqrt(variance_null) + z_power * math.sqrt(variance_truth)
    return max(1, math.ceil(root * root / (distance * distance)))


def documents_needed(n_documents: int, estimate: float, ci_low: float, ci_high: float, margin: float,
                     confidence: float, power: float = 0.8) -> int | None:
    """Documents a bootstrap interval of the same spread per document needs to decide against ``margin``
    with ``power``, if the true change were ``estimate``.

    The interval's half-width gives the standard error, ``se = (high − low) / (2 z)``, which shrinks
    as 1/sqrt(documents): n = n_now (z_{1−α} + z_{power})² se² / (estimate − margin)². None when the
    estimate sits on the margin.
    """
    distance = abs(estimate - margin)
    if distance < 1e-12:
        return None
    z_interval = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    se = (ci_high - ci_low) / (2.0 * z_interval)
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0) + NormalDist().inv_cdf(power)
    return max(1, math.ceil(n_documents * (z * se / distance) ** 2))


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no change" from replicates of a difference (e.g. summed loss).

    p = min(1, 2 min(#{≤ 0} + 1, #{≥ 0} + 1) / (B + 1)): the share of replicates on the far side of
    zero, doubled, with the +1 that keeps p above 0 for a finite B (Davison & Hinkley 1997, §4.4).
    """
    values = np.asarray(replicates, dtype=float)
    below, above = int(np.sum(values <= 0.0)), int(np.sum(values >= 0.0))
    return min(1.0, 2.0 * (min(below, above) + 1) / (values.size + 1))
