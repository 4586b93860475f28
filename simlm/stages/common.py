"""What the retrieval stages share: the splits they report, a run as `<split>.trec` and `<split>.msmarco.txt`."""

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
