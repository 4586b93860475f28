"""Re-ranker data: SimLM groups as (query, passage) pairs for training, a retrieval run to re-rank for validation.

Training groups, the training file, the validation queries/qrels (`data.val_split`: a dev split or a
held-out slice of the training queries) all come from `BiEncoderDataModule`; only the tokenisation and
the validation set differ.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from simlm.data.datamodules import BiEncoderDataModule
from simlm.data.formats import Run, read_run, rerank_candidates
from simlm.data.tokenization import MAX_LENGTH, passage_text, tokenize_pairs
from simlm.data.validation import holdout_order

log = logging.getLogger(__name__)


class GroupPairCollator:
    """Groups -> `{"pairs": tokenised [B*n] (query, title: text) rows, query-major; "scores": [B, n]}`."""

    def __init__(self, tokenizer: Any, max_length: int = MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        queries = [it["query"] for it in items for _ in it["texts"]]
        passages = [passage_text(t, x) for it in items for t, x in zip(it["titles"], it["texts"])]
        return {
            "pairs": dict(tokenize_pairs(self.tokenizer, queries, passages, self.max_length)),
            "scores": torch.tensor([it["scores"] for it in items], dtype=torch.float32),
        }


class RerankPairDataset(Dataset):
    """The `(qid, doc id)` candidates of a run as `{index, query, passage}` items."""

    def __init__(self, pairs: list[tuple[str, str]], queries: dict[str, str], corpus: Any) -> None:
        self.pairs = pairs
        self.queries = queries
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        qid, doc_id = self.pairs[index]
        p = self.corpus[self.corpus.row(doc_id)]
        return {"index": index, "query": self.queries[qid], "passage": passage_text(p.title, p.text)}


class PairCollator:
    """Candidate pairs -> `{"pairs": tokenised rows, "index": [rows] positions in the pair list}`."""

    def __init__(self, tokenizer: Any, max_length: int = MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        enc = tokenize_pairs(
            self.tokenizer, [it["query"] for it in items], [it["passage"] for it in items], self.max_length
        )
        return {"pairs": dict(enc), "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}


class RerankerDataModule(BiEncoderDataModule):
    """Training groups of 1 positive + (n-1) negatives as cross-encoder pairs; validation re-ranks a run.

    The validation run covers the validation queries (`data.val_split`: a dev split or held-out training queries):
    `val_run_file` (any TREC/MS MARCO run over them, e.g. from stage=search or stage=bm25), else the
    top-`val_depth` of `val_retriever` (the stage config's BM25: any object with
    `index(corpus).search(queries, top_k)`) computed at setup. Its top `val_depth` candidates per query are scored every
    validation epoch; `val_max_queries` keeps a fixed, hash-chosen subset of the queries (MS MARCO's
    6,980 dev queries x 200 candidates would make validation as long as an epoch).
    """

    def __init__(
        self,
        data: Any,
        model_name_or_path: str,
        max_length: int = MAX_LENGTH,
        train_file: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 128,
        train_n_passages: int = 64,
        seed: int = 987,
        num_workers: int = 0,
        max_train_examples: int | None = None,
        fill: str = "random",
        val_run_file: str | None = None,
        val_depth: int = 100,
        val_max_queries: int | None = None,
        val_retriever: Any | None = None,
        holdout_queries: int | None = None,
        train_fold: dict[str, int] | None = None,
    ) -> None:
        super().__init__(
            data,
            model_name_or_path,
            settings={},
            train_file=train_file,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            train_n_passages=train_n_passages,
            seed=seed,
            num_workers=num_workers,
            max_train_examples=max_train_examples,
            fill=fill,
            holdout_queries=holdout_queries,
            train_fold=train_fold,
        )
        self.max_length = max_length
        self.val_run_file = val_run_file
        self.val_depth = val_depth
        self.val_max_queries = val_max_queries
        self.val_retriever = val_retriever
        self.val_run: Run = {}
        self.val_pairs: list[tuple[str, str]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        super().setup(stage)
        self.collator = GroupPairCollator(self.tokenizer, self.max_length)
        if self.val_max_queries and len(self.val_queries) > self.val_max_queries:
            keep = set(sorted(self.val_queries, key=holdout_order)[: self.val_max_queries])
            self.val_queries = {q: t for q, t in self.val_queries.items() if q in keep}
            self.val_qrels = {q: j for q, j in self.val_qrels.items() if q in keep}
        self.val_run = self._validation_run()
        self.val_pairs = rerank_candidates(self.val_run, self.val_depth)
        self.val_dataset = (
            RerankPairDataset(self.val_pairs, self.val_queries, self.corpus) if self.val_pairs else None
        )
        log.info(
            "validation: re-rank the top %d of %d queries (%d pairs)",
            self.val_depth,
            len(self.val_run),
            len(self.val_pairs),
        )

    def _validation_run(self) -> Run:
        if not self.val_queries:
            return {}
        if self.val_run_file:
            full = read_run(self.val_run_file)
            run = {q: full[q] for q in self.val_queries if q in full}
            if not run:
                raise ValueError(
                    f"{self.val_run_file} ranks none of the {len(self.val_queries)} validation queries"
                )
            return run
        if self.val_retriever is None:
            raise ValueError(
                "the re-ranker's validation needs stage.datamodule.val_run_file=<a run over the validation "
                "queries> or a stage.datamodule.val_retriever (conf/stage/reranker.yaml: BM25)"
            )
        return self.val_retriever.index(self.corpus).search(self.val_queries, top_k=self.val_depth)

    def val_collator(self) -> PairCollator:
        """Validation scores single (query, passage) candidates of the run, not groups."""
        return PairCollator(self.tokenizer, self.max_length)
