"""RetrievalEvaluation: at validation end, retrieve for the validation queries and log IR metrics."""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch

from simlm.evaluation import evaluate_run
from simlm.retrieval.dense import dense_retrieve, sub_corpus_rows
from simlm.retrieval.encoding import encode_texts

log = logging.getLogger(__name__)


class RetrievalEvaluation(pl.Callback):
    """Encode the corpus (or a sub-corpus of `max_passages`: every judged passage + random others),
    search the datamodule's validation queries and log `val/ndcg@10`, `val/mrr@10`, `val/recall@100`.

    With several processes every rank encodes an equal slice of the passages (ZeRO-3 needs every rank
    in every forward pass) and the slices are all-gathered; rank 0 searches and scores, the metrics are
    broadcast and every rank logs them, so `ModelCheckpoint` can monitor them.
    """

    def __init__(
        self, max_passages: int | None = None, batch_size: int = 128, top_k: int = 100, backend: str = "faiss"
    ) -> None:
        self.max_passages = max_passages
        self.batch_size = batch_size
        self.top_k = max(top_k, 100)
        self.backend = backend
        self.history: list[dict[str, float]] = []

    def _encode_passages(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, rows: np.ndarray
    ) -> np.ndarray:
        dm = trainer.datamodule
        world, rank = trainer.world_size, trainer.global_rank
        per_rank = -(-len(rows) // world)
        # equal-length slices (the last padded with its own last row) keep the ranks' batches in lockstep
        mine = rows[rank * per_rank : (rank + 1) * per_rank]
        mine = np.concatenate([mine, np.full(per_rank - len(mine), rows[-1], dtype=rows.dtype)])
        emb = encode_texts(
            pl_module.encoder,
            dm.tokenizer,
            titles=dm.corpus.titles(mine.tolist()),
            texts=dm.corpus.texts(mine.tolist()),
            batch_size=self.batch_size,
            precision=trainer.precision,  # the training precision (trainer.precision=auto: the hardware's)
        )
        if world == 1:
            return emb
        gathered = trainer.strategy.all_gather(torch.from_numpy(emb).to(pl_module.device))
        return gathered.reshape(-1, emb.shape[1])[: len(rows)].cpu().numpy()

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """Metrics on rank 0 (None on the other ranks, which only help encoding)."""
        dm = trainer.datamodule
        rows = sub_corpus_rows(dm.corpus, dm.val_qrels, self.max_passages)
        rows = np.arange(len(dm.corpus), dtype=np.int64) if rows is None else rows
        p_emb = self._encode_passages(trainer, pl_module, rows)
        # every rank encodes the queries too (ZeRO-3 needs every rank in every forward pass)
        run = dense_retrieve(
            pl_module.encoder,
            dm.tokenizer,
            dm.corpus,
            dm.val_queries,
            self.top_k,
            rows=rows,
            batch_size=self.batch_size,
            precision=trainer.precision,
            backend=self.backend,
            shards=[(rows, p_emb)],
        )
        if not trainer.is_global_zero:
            return None
        m = evaluate_run(run, dm.val_qrels, mrr_threshold=dm.mrr_threshold)
        return {"val/ndcg@10": m["ndcg@10"], "val/mrr@10": m["mrr@10"], "val/recall@100": m["recall@100"]}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.sanity_checking or dm is None or not getattr(dm, "val_queries", None):
            return
        metrics = trainer.strategy.broadcast(self.evaluate(trainer, pl_module), src=0)
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        log.info(
            "epoch %d retrieval: %s", trainer.current_epoch, {k: round(v, 4) for k, v in metrics.items()}
        )
        pl_module.log_dict(metrics, prog_bar=True, sync_dist=False)
