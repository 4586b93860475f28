"""The one evaluation entry of stages and callbacks: a run against a data set's split."""

from __future__ import annotations

from typing import Any

from simlm.evaluation.metrics import Run, answer_accuracy, evaluate_run


def evaluate(run: Run, data: Any, split: str) -> dict[str, float] | None:
    """IR metrics against the split's qrels, or top-k answer accuracy for QA data; None if unjudged.

    `data` is a `simlm.data.dataset.RetrievalData` (answers, qrels and corpus of its splits).
    """
    answers = data.answers(split)
    if answers is not None:
        corpus = data.corpus
        return answer_accuracy(run, answers, lambda doc_id: corpus[corpus.row(doc_id)].text)
    if not data.has_qrels(split):
        return None
    return evaluate_run(run, data.qrels(split))
