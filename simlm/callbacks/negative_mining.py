"""NegativeMining: after `fit`, encode the corpus, search the training queries and mine hard negatives."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from simlm.checkpoints import load_best_weights
from simlm.data.formats import Qrels
from simlm.retrieval.dense import dense_retrieve
from simlm.retrieval.mining import MiningConfig, mine, write_mined
from simlm.retrieval.store import encode_corpus_to_shards, load_shards

log = logging.getLogger(__name__)


class NegativeMining(pl.Callback):
    """Mine `<out_dir>/train.jsonl` with the trained (best) model, so Retriever 2 can start from it.

    encode (sharded, resumable) -> exact search top-`depth` for every training query -> SimLM's
    negative construction (judged positives removed, shuffled, random fill), plus the optional
    false-negative controls of `MiningConfig`.
    """

    def __init__(
        self,
        out_dir: str,
        depth: int = 200,
        num_negatives: int = 210,
        min_random: int = 10,
        skip_top: int = 0,
        margin: float | None = None,
        seed: int = 42,
        batch_size: int = 128,
        shard_size: int = 50_000,
        backend: str = "faiss",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.mining = MiningConfig(
            depth=depth,
            num_negatives=num_negatives,
            min_random=min_random,
            skip_top=skip_top,
            margin=margin,
            seed=seed,
        )
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.backend = backend
        self.output_file: Path | None = None
        self.embeddings_dir: Path | None = None  # the corpus encoded by the final model, once mined

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            return
        load_best_weights(trainer, pl_module)
        dm = trainer.datamodule
        corpus, tokenizer = dm.corpus, dm.tokenizer
        emb_dir = self.out_dir / "embeddings"
        encode_corpus_to_shards(
            pl_module.encoder,
            tokenizer,
            corpus,
            emb_dir,
            shard_size=self.shard_size,
            batch_size=self.batch_size,
            dtype="float32",
            precision=trainer.precision,  # the training precision (trainer.precision=auto: the hardware's)
        )
        if not trainer.is_global_zero:
            return
        # the training queries only: validation queries never get training examples
        examples = dm.train_dataset.examples
        queries = {ex.query_id: ex.query for ex in examples}
        qrels: Qrels = dm.train_qrels()
        run = dense_retrieve(
            pl_module.encoder,
            tokenizer,
            corpus,
            queries,
            self.mining.depth,
            batch_size=self.batch_size,
            precision=trainer.precision,
            backend=self.backend,
            shards=load_shards(emb_dir),
        )
        mined, stats = mine(run, queries, corpus, self.mining, qrels=qrels)
        self.embeddings_dir = emb_dir
        self.output_file = write_mined(self.out_dir, "train", mined, stats)
        log.info("mined %d examples into %s (%s)", len(mined), self.output_file, stats)
