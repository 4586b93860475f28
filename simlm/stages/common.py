"""Helpers the stages share: output files for runs and evaluation against a split."""

from __future__ import annotations

from pathlib import Path

from simlm.data.dataset import RetrievalData
from simlm.data.formats import Run, write_run
from simlm.evaluation import answer_accuracy, evaluate_run


def write_run_files(out_dir: Path, split: str, run: Run, tag: str) -> dict[str, Path]:
    """Write `<split>.trec` and `<split>.msmarco.txt` (both atomically)."""
    paths = {"trec": out_dir / f"{split}.trec", "msmarco": out_dir / f"{split}.msmarco.txt"}
    write_run(paths["trec"], run, "trec", tag=tag)
    write_run(paths["msmarco"], run, "msmarco")
    return paths


def evaluate_split(data: RetrievalData, split: str, run: Run) -> dict[str, float] | None:
    """IR metrics against the split's qrels, or top-k answer accuracy for QA data; None if unjudged."""
    answers = data.answers(split)
    if answers is not None:
        corpus = data.corpus
        return answer_accuracy(run, answers, lambda doc_id: corpus[corpus.row(doc_id)].text)
    if not data.has_qrels(split):
        return None
    return evaluate_run(run, data.qrels(split))
