"""Retrieval evaluation: MS MARCO MRR, trec_eval metrics and DPR-style QA answer accuracy."""

from simlm.evaluation.answers import SimpleTokenizer, has_answer, normalize_text, parse_answers
from simlm.evaluation.metrics import (
    Qrels,
    Run,
    answer_accuracy,
    check_run_coverage,
    evaluate_run,
    mrr_at_k,
    mrr_threshold,
    trec_metrics,
)
from simlm.evaluation.split import evaluate

__all__ = [
    "Qrels",
    "Run",
    "SimpleTokenizer",
    "answer_accuracy",
    "check_run_coverage",
    "evaluate",
    "evaluate_run",
    "has_answer",
    "mrr_at_k",
    "mrr_threshold",
    "normalize_text",
    "parse_answers",
    "trec_metrics",
]
