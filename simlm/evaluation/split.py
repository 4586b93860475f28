"""The one evaluation entry of stages and callbacks: a run against a data set's split."""

from __future__ import annotations

from typing import Any

from simlm.evaluation.metrics import Run, answer_accuracy, check_run_coverage, evaluate_run, mrr_threshold


def evaluate(run: Run, data: Any, split: str, run_name: str | None = None) -> dict[str, float] | None:
    """IR metrics against the split's qrels (with the `mrr_threshold` used), or top-k answer accuracy
    for QA data; None if unjudged. A run sharing no query with the split raises (`check_run_coverage`).

    `data` is a `simlm.data.dataset.RetrievalData` (answers, qrels, corpus and `mrr_threshold`).
    """
    run_name = run_name or f"the run for split '{split}'"
    answers = data.answers(split)
    if answers is not None:
        check_run_coverage(run, answers, run_name, split)
        corpus = data.corpus
        return answer_accuracy(run, answers, lambda doc_id: corpus[corpus.row(doc_id)].text)
    if not data.has_qrels(split):
        return None
    qrels = data.qrels(split)
    check_run_coverage(run, qrels, run_name, split)
    threshold = mrr_threshold(qrels, data.mrr_threshold)
    return {**evaluate_run(run, qrels, mrr_threshold=threshold), "mrr_threshold": threshold}
