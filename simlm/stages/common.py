"""What the retrieval stages share: the splits they report, a run as `<split>.trec` and `<split>.msmarco.txt`,
and when a blended KD teacher needs no re-ranker logits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from simlm.data.formats import Run, write_run

log = logging.getLogger(__name__)


def report_splits(data: Any, eval_split: str | list[str], validation: bool = True) -> list[str]:
    """The splits a stage retrieves and reports: the validation split first (`data.val_split`, when it
    has judgements and `validation`), then `data.eval_split` (one name or a list), without repeats.

    `data` is a `simlm.data.dataset.RetrievalData`.
    """
    splits = [eval_split] if isinstance(eval_split, str) else list(eval_split)
    if not validation or data.val_split is None:
        return splits
    if not data.has_validation:
        log.warning(
            "data.val_split=%r has no judgements in %s: no validation run (training stages will refuse it)",
            data.val_spec.text,
            data.root,
        )
        return splits
    return [data.val_split] + [s for s in splits if s != data.val_split]


def write_run_files(out_dir: Path, split: str, run: Run, tag: str) -> dict[str, Path]:
    """Write `<split>.trec` and `<split>.msmarco.txt` (both atomically)."""
    paths = {"trec": out_dir / f"{split}.trec", "msmarco": out_dir / f"{split}.msmarco.txt"}
    write_run(paths["trec"], run, "trec", tag=tag)
    write_run(paths["msmarco"], run, "msmarco")
    return paths


def unused_reranker_scale(rerank_metrics: dict[str, Any]) -> float | None:
    """The re-ranker's score sd on unseen queries that a `stage=rerank` metrics.json recorded
    (`rerank.reranker_sd`), when its validated interpolation gives the re-ranker w = 0: a blended teacher
    then needs none of its logits, only that scale (`stage=teacher_scores`, the pipeline's fold steps).
    None otherwise."""
    if (rerank_metrics.get("interpolation") or {}).get("weight") != 0.0:
        return None
    scale = (rerank_metrics.get("rerank") or {}).get("reranker_sd")
    return float(scale) if scale else None
