"""Exact top-k search: `simlm.retrieval.index.search` (faiss and torch backends) vs numpy brute force.

Same random L2-normalised float32 embeddings: 100k passages x 384 dims, 1,000 queries, k=100. The numpy
baseline is a matmul plus `argpartition` and a sort of the top k per query. The ids must agree, except
where float rounding swaps near-equal scores (|difference| < 1e-6).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import best_of, peak_rss_mb, report

N_PASSAGES = 100_000
N_QUERIES = 1_000
DIM = 384
TOP_K = 100


def normalised(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(queries: np.ndarray, emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ emb.T
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, 1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, 1), np.take_along_axis(part, order, 1)


def main() -> None:
    from simlm.retrieval.index import search

    rng = np.random.default_rng(0)
    emb, queries = normalised(rng, N_PASSAGES), normalised(rng, N_QUERIES)
    rows = np.arange(N_PASSAGES, dtype=np.int64)

    np_seconds, (np_scores, np_ids) = best_of(lambda: numpy_topk(queries, emb, TOP_K))
    results = {"numpy matmul + argpartition": (np_seconds, np_scores, np_ids)}
    for backend in ("faiss", "torch"):
        seconds, (scores, ids) = best_of(lambda b=backend: search(queries, [(rows, emb)], TOP_K, backend=b))
        results[f"simlm search ({backend})"] = (seconds, scores, ids)
    # several shards go through the running merge: the price of sharding
    shards = [(rows[i : i + 25_000], emb[i : i + 25_000]) for i in range(0, N_PASSAGES, 25_000)]
    seconds, (scores, ids) = best_of(lambda: search(queries, shards, TOP_K, backend="faiss"))
    results["simlm search (faiss, 4 shards)"] = (seconds, scores, ids)

    table = []
    for name, (seconds, scores, ids) in results.items():
        table.append(
            {
                "method": name,
                "seconds": round(seconds, 3),
                "queries_per_s": round(N_QUERIES / seconds, 1),
                "speedup_vs_numpy": round(np_seconds / seconds, 2),
                # float rounding differs by library: only near-equal neighbours may swap places
                "ids_differing": int((ids != np_ids).sum()),
                "only_near_ties_differ": bool((np.abs(scores - np_scores)[ids != np_ids] < 1e-6).all()),
                "max_score_diff": float(np.abs(scores - np_scores).max()),
            }
        )
    notes = (
        f"{N_PASSAGES:,} x {DIM} passages, {N_QUERIES:,} queries, k={TOP_K}, float32, best of 3; "
        f"peak RSS {peak_rss_mb():.0f} MiB; load average at the end {os.getloadavg()[0]:.2f}"
    )
    report("search", table, notes)


if __name__ == "__main__":
    main()
