"""Helpers the stages share: output files for runs and evaluation against a split."""

from __future__ import annotations

from pathlib import Path

from simlm.data.dataset import RetrievalData
from simlm.data.formats import Run, write_run
from simlm.evaluation import answer_accuracy, check_run_coverage, evaluate_run, mrr_threshold


def write_run_files(out_dir: Path, split: str, run: Run, tag: str) -> dict[str, Path]:
    """Write `<split>.trec` and `<split>.msmarco.txt` (both atomically)."""
    paths = {"trec": out_dir / f"{split}.trec", "msmarco": out_dir / f"{split}.msmarco.txt"}
    write_run(paths["trec"], run, "trec", tag=tag)
    write_run(paths["msmarco"], run, "msmarco")
    return paths


def evaluate_split(
    data: RetrievalData, split: str, run: Run, run_name: str | None = None
) -> dict[str, float] | None:
    """IR metrics against the split's qrels (with the `mrr_threshold` used), or top-k answer accuracy
    for QA data; None if unjudged. A run sharing no query with the split raises (see check_run_coverage)."""
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
