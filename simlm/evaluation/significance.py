"""Is run A better than run B on these queries? Paired tests over per-query metric values.

IR differences between two systems are paired (the same queries) and per-query values are far from
normal (many 0s and 1s), so the tests here are distribution-free (Smucker, Allan & Carterette, CIKM 2007,
recommend the randomisation test for IR):
- p-value: the two-sided paired randomisation (sign-flip) test. Under "A and B are exchangeable" every
  per-query difference is equally likely to have either sign; p = (1 + #{flips with |mean| >= observed})
  / (1 + resamples).
- confidence interval of the mean difference: the paired bootstrap percentile interval (queries
  resampled with replacement).
Both are seeded, so a comparison is reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PairedComparison", "paired_comparison"]

_CHUNK = 1_000  # resamples drawn at once: bounds memory at chunk x queries


@dataclass(frozen=True)
class PairedComparison:
    """A - B over `queries` paired values (mean difference, its interval and the test's p-value)."""

    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    queries: int
    better: int  # queries where A > B
    worse: int  # queries where A < B
    resamples: int
    confidence: float

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def describe(self, name: str = "") -> str:
        """One line, e.g. `ndcg@10 0.4841 vs 0.4833: +0.0008 [95% CI -0.0239, +0.0246], p = 0.953 (...)`."""
        label = f"{name} " if name else ""
        return (
            f"{label}{self.mean_a:.4f} vs {self.mean_b:.4f}: {self.difference:+.4f} "
            f"[{self.confidence:.0%} CI {self.ci_low:+.4f}, {self.ci_high:+.4f}], p = {self.p_value:.3g} "
            f"({self.queries} queries: {self.better} better, {self.worse} worse)"
        )


def paired_comparison(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare per-query values `a` and `b` (qid -> value) over the same queries.

    Raises ValueError when the two cover different queries (a metric dict from
    `simlm.evaluation.per_query` covers every judged query of its split, so two runs of the same split
    always pair up), when there is no query, or for a resample count < 1 or a confidence outside (0, 1).
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(
            f"paired comparison needs the same queries on both sides: {len(only_a)} only in A "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]})"
        )
    if not a:
        raise ValueError("paired comparison needs at least one query")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    qids = sorted(a)
    values_a = np.array([a[q] for q in qids], dtype=np.float64)
    values_b = np.array([b[q] for q in qids], dtype=np.float64)
    diff = values_a - values_b
    n = len(diff)
    observed = diff.mean()
    rng = np.random.default_rng(seed)
    # a flipped mean equal to the observed one up to rounding counts as "as extreme"
    threshold = abs(observed) - 1e-12 * max(1.0, float(np.abs(diff).max()))
    extreme = 0
    boot_means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ diff) / n >= threshold).sum())
        picks = rng.integers(0, n, size=(size, n))
        boot_means[start : start + size] = diff[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot_means, [tail, 1 - tail])
    return PairedComparison(
        mean_a=float(values_a.mean()),
        mean_b=float(values_b.mean()),
        difference=float(observed),
        ci_low=float(low),
        ci_high=float(high),
        p_value=(1 + extreme) / (1 + resamples),
        queries=n,
        better=int((diff > 0).sum()),
        worse=int((diff < 0).sum()),
        resamples=resamples,
        confidence=confidence,
    )
