"""Lightning DataModules: bi-encoder groups (query + positive + hard negatives) from SimLM example files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from simlm.data.corpus import Corpus
from simlm.data.dataset import RetrievalData
from simlm.data.folds import FoldSettings
from simlm.data.formats import Qrels, ScoredDocs, TrainingExample, read_examples
from simlm.data.sampling import sample_group
from simlm.data.tokenization import RetrievalSettings, load_tokenizer, tokenize_passages, tokenize_queries

log = logging.getLogger(__name__)


class GroupDataset(Dataset):
    """Examples -> `{query, titles, texts, scores}` groups sampled for the current epoch (as SimLM's data loader)."""

    def __init__(
        self,
        examples: list[TrainingExample],
        corpus: Corpus,
        n_passages: int,
        seed: int,
        fill: str = "random",
    ) -> None:
        self.examples = examples
        self.corpus = corpus
        self.n_passages = n_passages
        self.seed = seed
        self.fill = fill
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        group = sample_group(ex, self.n_passages, self.epoch, self.seed, self.corpus, self.fill)
        passages = self.corpus.passages([self.corpus.row(d) for d in group.doc_ids])
        return {
            "query": ex.query,
            "titles": [p.title for p in passages],
            "texts": [p.text for p in passages],
            "scores": group.scores,
        }


class GroupCollator:
    """Tokenises queries and the query-major flattened passages of a batch of groups."""

    def __init__(self, tokenizer: Any, settings: RetrievalSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        titles = [t for it in items for t in it["titles"]]
        texts = [x for it in items for x in it["texts"]]
        return {
            "query": dict(tokenize_queries(self.tokenizer, [it["query"] for it in items], self.settings)),
            "passage": dict(tokenize_passages(self.tokenizer, titles, texts, self.settings)),
            "scores": torch.tensor([it["scores"] for it in items], dtype=torch.float32),
        }


def examples_from_qrels(qrels: Qrels, queries: dict[str, str]) -> list[TrainingExample]:
    """Validation examples: judged positives, negatives drawn at random from the corpus by the sampler."""
    out = []
    for qid, judged in qrels.items():
        positives = [d for d, g in judged.items() if g >= 1]
        if positives and qid in queries:
            out.append(
                TrainingExample(
                    qid, queries[qid], ScoredDocs(positives, [1.0] * len(positives)), ScoredDocs()
                )
            )
    return out


class CorpusDataModule(pl.LightningDataModule):
    """What every stage's DataModule shares: the data set's corpus and shuffled/ordered loaders.

    Subclasses set `data`, `train_dataset`, `val_dataset` (or None), `collator`, `batch_size`,
    `eval_batch_size` and `num_workers` in `__init__`/`setup`.
    """

    data: RetrievalData | None = None

    @property
    def mrr_threshold(self) -> int | None:
        """The data set's `data.mrr_threshold` for validation MRR (None: the default rule, or before setup)."""
        return getattr(self.data, "mrr_threshold", None)

    @property
    def corpus(self) -> Corpus:
        assert self.data is not None, "call setup() first"
        return self.data.corpus

    def train_dataloader(self) -> DataLoader:
        # Lightning creates the first training iterator (forking the workers, each with a copy of the
        # dataset) before the first `on_train_epoch_start`; on resume that epoch is not 0, so the epoch
        # must be set here, or the workers sample epoch 0's groups. Later epochs get a new iterator after
        # `on_train_epoch_start` (`set_sampling_epoch`), so fresh workers see the new epoch.
        if self.trainer is not None and hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(self.trainer.current_epoch)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            drop_last=len(self.train_dataset) >= self.batch_size,
        )

    def val_collator(self) -> Any:
        """How validation items become batches (the training collator unless a subclass says otherwise)."""
        return self.collator

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []
        return DataLoader(
            self.val_dataset,
            batch_size=self.eval_batch_size,
            collate_fn=self.val_collator(),
            num_workers=self.num_workers,
        )


class BiEncoderDataModule(CorpusDataModule):
    """Training groups from a SimLM examples file; validation queries/qrels for retrieval evaluation.

    `train_file`: SimLM jsonl (BM25 negatives from `stage=bm25`, mined ones from `stage=mine`, SimLM's
    released files); default `<data.root>/<train_split>.jsonl`. Validation is `data.val_split`
    (`simlm.data.validation`: a dev split, or `holdout:<n|fraction>` of the training queries); examples
    of validation queries are dropped from training, whatever file they come from.
    `fill` completes short negative lists of training groups: "random" corpus passages or "repeat"
    (SimLM's wrapping window, which KD needs: every passage keeps its teacher score).
    """

    def __init__(
        self,
        data: Any,
        model_name_or_path: str,
        settings: dict[str, Any],
        train_file: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        train_n_passages: int = 16,
        eval_n_passages: int = 8,
        seed: int = 1234,
        num_workers: int = 0,
        max_train_examples: int | None = None,
        fill: str = "random",
        holdout_queries: int | None = None,
        train_fold: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_no_holdout_queries(holdout_queries)
        self.train_fold = FoldSettings.parse(train_fold)
        self.data_cfg = data
        self.model_name_or_path = model_name_or_path
        self.settings = RetrievalSettings.from_dict(dict(settings))
        self.train_file = train_file
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_n_passages = train_n_passages
        self.eval_n_passages = eval_n_passages
        self.seed = seed
        self.num_workers = num_workers
        self.max_train_examples = max_train_examples
        self.fill = fill
        self.data: RetrievalData | None = None
        self.val_queries: dict[str, str] = {}
        self.val_qrels: Qrels = {}

    # ------------------------------------------------------------------ setup
    def resolve_train_file(self, data: RetrievalData) -> Path:
        if self.train_file:
            return Path(self.train_file)
        split = self.data_cfg.get("train_split", "train")
        path = data.examples_path(split)
        if path is None:
            raise FileNotFoundError(
                f"no training examples: {data.root} has no {split}.jsonl. Run "
                "`.venv/bin/python run.py stage=bm25 data=...` "
                "(BM25 negatives) or stage=mine, and pass stage.datamodule.train_file=<its train.jsonl>"
            )
        return path

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = RetrievalData.from_config(self.data_cfg)
        corpus = self.data.corpus
        self.tokenizer = load_tokenizer(self.model_name_or_path)
        examples = read_examples(self.resolve_train_file(self.data), doc_ids=corpus)
        validation = self.data.validation
        if validation is not None:
            self.val_qrels = validation.qrels or _positives_as_qrels(examples, validation.query_ids)
            self.val_queries = {q: t for q, t in validation.queries.items() if q in self.val_qrels}
            kept = [ex for ex in examples if ex.query_id not in validation.query_ids]
            if len(kept) < len(examples):
                log.info(
                    "validation split %r: %d examples of its queries left out of training",
                    validation.name,
                    len(examples) - len(kept),
                )
            examples = kept
        if self.train_fold is not None:  # cross-fitting: this model never sees the excluded fold's queries
            examples = [ex for ex in examples if self.train_fold.keeps(ex.query_id)]
        if self.max_train_examples:
            examples = examples[: self.max_train_examples]
        if not examples:
            raise ValueError("no training examples left after leaving out the validation queries")
        self.train_dataset = GroupDataset(examples, corpus, self.train_n_passages, self.seed, self.fill)
        val_examples = examples_from_qrels(self.val_qrels, self.val_queries)
        self.val_dataset = (
            GroupDataset(val_examples, corpus, self.eval_n_passages, self.seed) if val_examples else None
        )
        self.collator = GroupCollator(self.tokenizer, self.settings)

    def train_qrels(self) -> Qrels:
        """Judgements of the training queries: the split's qrels if the data set has them, else the positives.

        Never those of validation queries (`RetrievalData` cuts a held-out slice from the training split).
        """
        assert self.data is not None, "call setup() first"
        split = self.data_cfg.get("train_split", "train")
        if split and self.data.has_qrels(split):
            return self.data.qrels(split)
        return _positives_as_qrels(self.train_dataset.examples)


def _positives_as_qrels(examples: list[TrainingExample], only: frozenset[str] | None = None) -> Qrels:
    """Grade-1 judgements from the examples' positives (of the query ids `only`, when given).

    QA data have no qrels: its validation queries are judged by the positives their examples carry.
    """
    return {
        ex.query_id: dict.fromkeys(ex.positives.doc_ids, 1)
        for ex in examples
        if only is None or ex.query_id in only
    }


def check_no_holdout_queries(value: int | None) -> None:
    """`stage.datamodule.holdout_queries` is gone: the validation split is one data setting for every stage."""
    if value is not None:
        raise ValueError(
            f"stage.datamodule.holdout_queries={value!r} was removed: the validation split is "
            "data.val_split for every stage, e.g. data.val_split=holdout:100 (100 training queries held "
            "out), data.val_split=holdout:0.1 (a tenth), data.val_split=dev, or null (no validation)"
        )
