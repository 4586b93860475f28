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
from simlm.evaluation.significance import PairedComparison, paired_comparison
from simlm.evaluation.split import evaluate, per_query, summarize

__all__ = [
    "PairedComparison",
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
    "paired_comparison",
    "parse_answers",
    "per_query",
    "summarize",
    "trec_metrics",
]
