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
from simlm.data.validation import (
    HOLDOUT,
    KEY,
    ValidationSplit,
    ValSplitSpec,
    choose_val_split,
    holdout_ids,
    parse_val_split,
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

    `val_split` (`data.val_split`, `simlm.data.validation`): a split with its own judgements, or
    `holdout:<n|fraction>`, or alternatives `dev|holdout:0.1` (the first the data set has). A held-out
    slice is the split `holdout` (queries, qrels, answers), and it is removed from `train_split` in
    everything this object returns, so no stage can train on it.
    """

    def __init__(
        self,
        root: str | Path,
        layout: str = "beir",
        task: str = "ir",
        mrr_threshold: int | None = None,
        *,
        train_split: str = "train",
        val_split: str | None = None,
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
        self.train_split = train_split
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {self.root} is not a directory")
        self.val_spec: ValSplitSpec | None = None  # choose_val_split's checks must not see a half-built spec
        val_split = choose_val_split(
            val_split,
            lambda split: self._has_file_qrels(split) or self._has_answers(split),
            lambda: len(self._judged_training_queries() or {}),
        )
        self.val_spec = parse_val_split(val_split)
        if self.val_spec is not None and self.val_spec.split == train_split:
            raise ValueError(
                f"{KEY}={val_split!r} is the training split (data.train_split): validation queries are "
                f"never trained on; hold some out instead ({KEY}=holdout:<n or fraction>)"
            )

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
        return cls(
            root,
            layout,
            data_cfg.get("task", "ir"),
            data_cfg.get("mrr_threshold", None),
            train_split=data_cfg.get("train_split", None) or "train",
            val_split=data_cfg.get("val_split", None),
        )

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
        """A split's queries (and QA answers) as the files hold them, before any holdout."""
        if self.layout == "beir":
            qrels = self._file_qrels(split, check_docs=False)  # the query ids only: no corpus needed
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

    # ------------------------------------------------------------------ the validation protocol
    def _is_holdout(self, split: str) -> bool:
        return split == HOLDOUT and self.val_spec is not None and self.val_spec.is_holdout

    def _source(self, split: str) -> str:
        """The split whose files hold `split`'s data: the training split for the held-out slice."""
        return self.train_split if self._is_holdout(split) else split

    @functools.cached_property
    def holdout_ids(self) -> frozenset[str]:
        """Training query ids held out for validation (`data.val_split=holdout:...`); empty otherwise.

        Chosen among the training split's judged queries (its qrels, or its QA answers) in sha256 order.
        """
        if self.val_spec is None or not self.val_spec.is_holdout:
            return frozenset()
        split = self.train_split
        judged = self._judged_training_queries()
        if judged is None:
            raise ValueError(
                f"{KEY}={self.val_spec.text!r} holds out judged training queries, but the training split "
                f"'{split}' of {self.root} has no qrels: name a split with judgements instead "
                f"({KEY}=<split>) or null"
            )
        return holdout_ids(judged, self.val_spec)

    def _judged_training_queries(self) -> dict[str, Any] | None:
        """The training split's judgements by query (qrels, or QA answers); None when it has none."""
        split = self.train_split
        if self.task == "qa":
            return self._split_queries(split)[1] or {}
        if self._has_file_qrels(split):
            return self._file_qrels(split, check_docs=False)
        return None

    def _restrict(self, split: str, by_query: dict[str, Any]) -> dict[str, Any]:
        """`by_query` of the split's files cut to `split`: the held-out slice, or the training split without it."""
        held = self.holdout_ids if (self._is_holdout(split) or split == self.train_split) else frozenset()
        if not held:
            return by_query
        if self._is_holdout(split):
            return {q: v for q, v in by_query.items() if q in held}
        return {q: v for q, v in by_query.items() if q not in held}

    @property
    def val_split(self) -> str | None:
        """The validation split's name (`dev`, `holdout`), or None when `data.val_split` is null."""
        return None if self.val_spec is None else self.val_spec.name

    @functools.cached_property
    def validation(self) -> ValidationSplit | None:
        """The resolved validation split (None when `data.val_split` is null).

        Raises ValueError naming `data.val_split` when it names a split without judgements (or answers).
        """
        spec = self.val_spec
        if spec is None:
            return None
        name = spec.name
        if not spec.is_holdout and not self.has_qrels(name) and not self._has_answers(name):
            raise ValueError(
                f"{KEY}={spec.text!r}: {self.root} has no judgements for split '{name}'. Validate on a "
                f"held-out slice of the training queries instead ({KEY}=holdout:<n or fraction>, e.g. "
                f"{KEY}=holdout:100), or pass {KEY}=null (no validation)"
            )
        answers = self.answers(name)
        return ValidationSplit(
            name=name,
            queries=self.queries(name),
            qrels={} if answers is not None else self.qrels(name),
            answers=answers,
            held_out=self.holdout_ids,
        )

    @property
    def has_validation(self) -> bool:
        """Whether `data.val_split` is set and has judgements (or QA answers) to validate with."""
        spec = self.val_spec
        if spec is None:
            return False
        split = self._source(spec.name)
        return self._has_file_qrels(split) or self._has_answers(split)

    @property
    def validation_ids(self) -> frozenset[str]:
        """The validation queries' ids, never a training example: the held-out slice, or the queries of
        the validation split (none when `data.val_split` is null or names a split the data set lacks)."""
        spec = self.val_spec
        if spec is None:
            return frozenset()
        if spec.is_holdout:
            return self.holdout_ids
        exists = self.has_qrels(spec.name) or (
            self.layout != "beir" and self._path(f"{spec.name}_queries.tsv", required=False) is not None
        )
        return frozenset(self.queries(spec.name)) if exists else frozenset()

    def _has_answers(self, split: str) -> bool:
        if self.task != "qa" or self.layout == "beir":
            return False
        return self._path(f"{self._source(split)}_queries.tsv", required=False) is not None

    # ------------------------------------------------------------------ splits
    def queries(self, split: str) -> dict[str, str]:
        """Queries of `split` (BEIR: the queries judged in `qrels/<split>.tsv`); see `val_split`."""
        return self._restrict(split, self._split_queries(self._source(split))[0])

    def answers(self, split: str) -> dict[str, list[str]] | None:
        """Answer strings per question for QA data (`task=qa`), else None."""
        answers = self._split_queries(self._source(split))[1]
        return None if answers is None else self._restrict(split, answers)

    def has_qrels(self, split: str) -> bool:
        return self._has_file_qrels(self._source(split))

    def _has_file_qrels(self, split: str) -> bool:
        return self.qrels_path(split, required=False) is not None

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def qrels(self, split: str, check_docs: bool = True) -> Qrels:
        """Judgements of `split`, ids checked against the queries and (`check_docs`) the corpus.

        A judgement naming a passage the corpus lacks raises `DataFormatError` (file, line, field): it
        would count as a relevant passage no run can retrieve. The check is one hash (or, for SimLM's
        row-number ids, arithmetic) lookup per judgement; it loads the corpus if it is not loaded yet.
        Grades are integers; <= 0 (e.g. -1) means judged not relevant (see `simlm.evaluation.metrics`).
        The held-out slice (`holdout`) and the training split without it are cut from the training files.
        """
        return self._restrict(split, self._file_qrels(self._source(split), check_docs))

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def _file_qrels(self, split: str, check_docs: bool = True) -> Qrels:
        path = self.qrels_path(split)
        doc_ids = self.corpus if check_docs else None
        if self.layout == "beir":
            qrels = read_beir_qrels(path, query_ids=self._beir_queries, doc_ids=doc_ids)
        else:
            has_queries = self._path(f"{split}_queries.tsv", required=False)
            query_ids = self._split_queries(split)[0] if has_queries else None
            qrels = read_trec_qrels(path, query_ids=query_ids, doc_ids=doc_ids)
        if not qrels:
            raise EmptySplitError(path, None, None, f"split '{split}' has no judgements")
        return qrels
