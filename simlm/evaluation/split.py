"""The one evaluation entry of stages and callbacks: a run against a data set's split."""

from __future__ import annotations

from typing import Any

from simlm.evaluation.metrics import (
    PerQuery,
    Run,
    answer_hits,
    check_run_coverage,
    means,
    mrr_threshold,
    per_query_metrics,
)


def per_query(
    run: Run, data: Any, split: str, run_name: str | None = None
) -> tuple[PerQuery, int | None] | None:
    """`(metric -> {qid: value} over every judged query, the mrr_threshold used or None for QA)`: IR
    metrics against the split's qrels, or top-k answer accuracy for QA data; None if unjudged. A run
    sharing no query with the split raises (`check_run_coverage`).

    `data` is a `simlm.data.dataset.RetrievalData` (answers, qrels, corpus and `mrr_threshold`).
    """
    run_name = run_name or f"the run for split '{split}'"
    answers = data.answers(split)
    if answers is not None:
        check_run_coverage(run, answers, run_name, split)
        corpus = data.corpus
        return answer_hits(run, answers, lambda doc_id: corpus[corpus.row(doc_id)].text), None
    if not data.has_qrels(split):
        return None
    qrels = data.qrels(split)
    check_run_coverage(run, qrels, run_name, split)
    threshold = mrr_threshold(qrels, data.mrr_threshold)
    return per_query_metrics(run, qrels, mrr_threshold=threshold), threshold


def summarize(values: PerQuery, threshold: int | None) -> dict[str, float]:
    """The means of :func:`per_query`'s values, with `num_queries` and `mrr_threshold` for IR data."""
    metrics = means(values)
    if threshold is None:
        return metrics
    return {**metrics, "num_queries": len(next(iter(values.values()), {})), "mrr_threshold": threshold}


def evaluate(run: Run, data: Any, split: str, run_name: str | None = None) -> dict[str, float] | None:
    """The split's metrics of `run` (:func:`summarize` of :func:`per_query`): IR metrics with
    `num_queries` and the `mrr_threshold` used, or top-k answer accuracy for QA data; None if unjudged."""
    scored = per_query(run, data, split, run_name)
    return None if scored is None else summarize(*scored)
