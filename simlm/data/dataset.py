"""One view over a retrieval data set on disk, whatever its layout (BEIR, SimLM/MS MARCO, demo)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from simlm.data.corpus import Corpus
from simlm.data.download import BEIR_URL_DEFAULT, fetch_beir
from simlm.data.errors import EmptySplitError
from simlm.data.formats import (
    Qrels,
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
    read_qa_queries_tsv,
    read_queries_tsv,
    read_simlm_passages,
    read_trec_qrels,
)

LAYOUTS = ("beir", "msmarco", "demo")


def _first_existing(root: Path, names: list[str]) -> Path | None:
    for name in names:
        if (root / name).exists():
            return root / name
    return None


class RetrievalData:
    """Corpus, per-split queries, qrels, answers (QA) and training-example paths of one data set.

    `layout="beir"`: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv` (BEIR).
    `layout="msmarco"`: SimLM's `passages.jsonl.gz`, `<split>_queries.tsv`, `<split>_qrels.txt`,
    `<split>.jsonl` training examples; with `task="qa"` the query files hold `question<TAB>answers`.
    `layout="demo"`: the offline stdlib-documentation set, built on first use (BEIR files).
    Every file may be gzip-compressed (`.gz`).

    `mrr_threshold` (`data.mrr_threshold`): the grade from which a passage counts as relevant for MRR@10;
    None keeps the MS MARCO rule (2 when the qrels are graded up to 3 or more, else 1).
    """

    def __init__(
        self, root: str | Path, layout: str = "beir", task: str = "ir", mrr_threshold: int | None = None
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {LAYOUTS}, got {layout!r}")
        if task not in ("ir", "qa"):
            raise ValueError(f"data.task must be 'ir' or 'qa', got {task!r}")
        if mrr_threshold is not None and (
            isinstance(mrr_threshold, bool) or not isinstance(mrr_threshold, int) or mrr_threshold < 1
        ):
            raise ValueError(f"data.mrr_threshold must be an integer >= 1 or null, got {mrr_threshold!r}")
        self.root = Path(root)
        self.layout = "beir" if layout == "demo" else layout
        self.task = task
        self.mrr_threshold = mrr_threshold
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {self.root} is not a directory")

    @classmethod
    def from_config(cls, data_cfg: Any) -> RetrievalData:
        """Build from the `data` config group (`layout`, `root`, `task`; demo data are built on first use)."""
        layout = data_cfg.layout
        root = data_cfg.root
        if layout == "demo":
            from simlm.data.demo import ensure_demo_dataset

            root = ensure_demo_dataset(data_cfg.cache_dir)
        if root is None and layout == "beir" and data_cfg.get("name") not in (None, "beir"):
            root = fetch_beir(
                str(data_cfg.name), data_cfg.cache_dir, data_cfg.get("url", None) or BEIR_URL_DEFAULT
            )
        if root is None:
            raise ValueError(
                "data.root is required (the folder holding the data set); with data=beir, "
                "data.name=<BEIR data set, e.g. scifact> downloads it instead"
            )
        return cls(root, layout, data_cfg.get("task", "ir"), data_cfg.get("mrr_threshold", None))

    # ------------------------------------------------------------------ files
    def _path(self, *names: str, required: bool = True, what: str = "file") -> Path | None:
        candidates = [n for name in names for n in (name, name + ".gz")]
        path = _first_existing(self.root, candidates)
        if path is None and required:
            raise FileNotFoundError(f"{self.root}: no {what} (looked for {', '.join(candidates)})")
        return path

    def corpus_path(self) -> Path:
        if self.layout == "beir":
            return self._path("corpus.jsonl", what="corpus")
        return self._path("passages.jsonl", what="corpus")

    def qrels_path(self, split: str, required: bool = True) -> Path | None:
        if self.layout == "beir":
            return self._path(f"qrels/{split}.tsv", required=required, what=f"qrels for split '{split}'")
        return self._path(f"{split}_qrels.txt", required=required, what=f"qrels for split '{split}'")

    def examples_path(self, split: str) -> Path | None:
        """SimLM-style training examples shipped with the data (`<split>.jsonl`), if any."""
        return self._path(f"{split}.jsonl", required=False)

    # ------------------------------------------------------------------ contents
    @functools.cached_property
    def corpus(self) -> Corpus:
        path = self.corpus_path()
        return read_beir_corpus(path) if self.layout == "beir" else read_simlm_passages(path)

    @functools.cached_property
    def _beir_queries(self) -> dict[str, str]:
        return read_beir_queries(self._path("queries.jsonl", what="queries"))

    @functools.lru_cache(maxsize=8)  # noqa: B019 - the data object lives as long as the stage
    def _split_queries(self, split: str) -> tuple[dict[str, str], dict[str, list[str]] | None]:
        if self.layout == "beir":
            qrels = self.qrels(split, check_docs=False)  # the query ids only: no need to read the corpus
            all_queries = self._beir_queries
            return {qid: all_queries[qid] for qid in qrels}, None
        path = self._path(f"{split}_queries.tsv", what=f"queries for split '{split}'")
        if self.task == "qa":
            queries, answers = read_qa_queries_tsv(path)
        else:
            queries, answers = read_queries_tsv(path), None
        if not queries:
            raise EmptySplitError(path, None, None, f"split '{split}' has no queries")
        return queries, answers

    def queries(self, split: str) -> dict[str, str]:
        """Queries of `split` (BEIR: the queries judged in `qrels/<split>.tsv`)."""
        return self._split_queries(split)[0]

    def answers(self, split: str) -> dict[str, list[str]] | None:
        """Answer strings per question for QA data (`task=qa`), else None."""
        return self._split_queries(split)[1]

    def has_qrels(self, split: str) -> bool:
        return self.qrels_path(split, required=False) is not None

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def qrels(self, split: str, check_docs: bool = True) -> Qrels:
        """Judgements of `split`, ids checked against the queries and (`check_docs`) the corpus.

        A judgement naming a passage the corpus lacks raises `DataFormatError` (file, line, field): it
        would count as a relevant passage no run can retrieve. The check is one hash (or, for SimLM's
        row-number ids, arithmetic) lookup per judgement; it loads the corpus if it is not loaded yet.
        Grades are integers; <= 0 (e.g. -1) means judged not relevant (see `simlm.evaluation.metrics`).
        """
        path = self.qrels_path(split)
        doc_ids = self.corpus if check_docs else None
        if self.layout == "beir":
            qrels = read_beir_qrels(path, query_ids=self._beir_queries, doc_ids=doc_ids)
        else:
            query_ids = self.queries(split) if self._path(f"{split}_queries.tsv", required=False) else None
            qrels = read_trec_qrels(path, query_ids=query_ids, doc_ids=doc_ids)
        if not qrels:
            raise EmptySplitError(path, None, None, f"split '{split}' has no judgements")
        return qrels
