"""Cross-fitting folds of the training queries, and the record of which queries a model trained on.

A cross-fitted KD teacher is K re-rankers, re-ranker i trained on every training query outside fold i;
each query is then scored by the re-ranker of its own fold, which never saw it. The fold of a query is
a hash of its id (independent of file order and of the validation hold-out), so every stage agrees on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from simlm.data.io import atomic_write

TRAINED_QUERIES_FILE = "simlm_trained_queries.json"

__all__ = ["TRAINED_QUERIES_FILE", "FoldSettings", "fold_of", "read_trained_queries", "write_trained_queries"]


def fold_of(query_id: str, folds: int) -> int:
    """The fold (0 .. folds-1) of `query_id`."""
    digest = hashlib.sha256(f"simlm-fold:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


class FoldSettings:
    """`stage.datamodule.train_fold`: train on the queries outside fold `exclude` of `folds`."""

    def __init__(self, folds: int, exclude: int) -> None:
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"stage.datamodule.train_fold.folds must be an integer >= 2, got {folds!r}")
        if isinstance(exclude, bool) or not isinstance(exclude, int) or not 0 <= exclude < folds:
            raise ValueError(
                f"stage.datamodule.train_fold.exclude must be an integer in [0, {folds - 1}], got {exclude!r}"
            )
        self.folds, self.exclude = folds, exclude

    @classmethod
    def parse(cls, value: Any) -> FoldSettings | None:
        """None: train on every query; `{folds: K, exclude: i}`; anything else is a ValueError."""
        if value is None:
            return None
        if not isinstance(value, Mapping) or set(value) != {"folds", "exclude"}:
            raise ValueError(
                f"stage.datamodule.train_fold must be null or {{folds: <K>, exclude: <i>}}, got {value!r}"
            )
        return cls(value["folds"], value["exclude"])

    def keeps(self, query_id: str) -> bool:
        return fold_of(query_id, self.folds) != self.exclude


def write_trained_queries(model_dir: str | Path, query_ids: Iterable[str], fold: FoldSettings | None) -> Path:
    """Record in the saved model folder the training queries it saw (and its fold), atomically."""
    path = Path(model_dir) / TRAINED_QUERIES_FILE
    record = {
        "folds": fold.folds if fold else None,
        "excluded_fold": fold.exclude if fold else None,
        "query_ids": sorted(set(query_ids)),
    }
    with atomic_write(path) as f:
        json.dump(record, f)
    return path


def read_trained_queries(model_dir: str | Path) -> dict[str, Any] | None:
    """The record `write_trained_queries` left in `model_dir`, or None for a model trained elsewhere."""
    path = Path(model_dir) / TRAINED_QUERIES_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    record["query_ids"] = set(record["query_ids"])
    return record
