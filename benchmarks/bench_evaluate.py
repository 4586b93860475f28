"""Evaluation speed: `stage=evaluate` path (read run file + metrics) on a 7,000-query x 1,000-doc run.

Reference measured in the same run: pytrec_eval alone on an in-memory dict (no file reading, no MRR).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import best_of, peak_rss_mb, report
from simlm.data.formats import read_run, write_run
from simlm.evaluation import evaluate_run

N_QUERIES, DEPTH, N_DOCS = 7_000, 1_000, 500_000


def make_run_and_qrels(seed: int = 0):
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for q in range(N_QUERIES):
        docs = rng.choice(N_DOCS, size=DEPTH, replace=False)
        scores = np.sort(rng.random(DEPTH))[::-1]
        run[str(q)] = [(str(d), float(s)) for d, s in zip(docs, scores)]
        relevant = (
            docs[rng.integers(0, DEPTH, size=2)] if rng.random() < 0.8 else rng.integers(0, N_DOCS, size=1)
        )
        qrels[str(q)] = {str(d): 1 for d in relevant}
    return run, qrels


def main() -> dict:
    import pytrec_eval

    run, qrels = make_run_and_qrels()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dev.msmarco.txt"
        write_run(path, run, "msmarco")
        t_read, loaded = best_of(lambda: read_run(path), repeats=2)
        t_metrics, metrics = best_of(lambda: evaluate_run(loaded, qrels), repeats=2)

    def reference():
        as_dict = {q: {d: s for d, s in r} for q, r in run.items()}
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100", "recall_1000", "map"})
        return evaluator.evaluate(as_dict)

    t_ref, _ = best_of(reference, repeats=2)
    rows = [
        {"what": "read run file (7M lines)", "seconds": t_read},
        {"what": "evaluate_run (MRR@10 + trec metrics)", "seconds": t_metrics},
        {
            "what": "stage=evaluate total",
            "seconds": t_read + t_metrics,
            "ratio_vs_reference": (t_read + t_metrics) / t_ref,
        },
        {"what": "reference: pytrec_eval on an in-memory dict", "seconds": t_ref, "ratio_vs_reference": 1.0},
    ]
    return report(
        "evaluate",
        rows,
        notes=f"{N_QUERIES} queries x {DEPTH} docs; ndcg@10={metrics['ndcg@10']:.4f}; peak RSS {peak_rss_mb():.0f} MiB",
    )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
