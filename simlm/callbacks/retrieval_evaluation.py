"""RetrievalEvaluation: at validation end, retrieve for the validation queries and log IR metrics."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from simlm.evaluation import evaluate_run
from simlm.retrieval.dense import dense_retrieve, sub_corpus_rows

log = logging.getLogger(__name__)


class RetrievalEvaluation(pl.Callback):
    """Encode the corpus (or a sub-corpus of `max_passages`: every judged passage + random others),
    search the datamodule's validation queries and log `val/ndcg@10`, `val/mrr@10`, `val/recall@100`.

    Rank 0 computes, the metrics are broadcast, and every rank logs them so `ModelCheckpoint` can
    monitor them under DDP.
    """

    def __init__(
        self, max_passages: int | None = None, batch_size: int = 128, top_k: int = 100, backend: str = "faiss"
    ) -> None:
        self.max_passages = max_passages
        self.batch_size = batch_size
        self.top_k = max(top_k, 100)
        self.backend = backend
        self.history: list[dict[str, float]] = []

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        dm = trainer.datamodule
        rows = sub_corpus_rows(dm.corpus, dm.val_qrels, self.max_passages)
        run = dense_retrieve(
            pl_module.encoder,
            dm.tokenizer,
            dm.corpus,
            dm.val_queries,
            self.top_k,
            rows,
            self.batch_size,
            self.backend,
        )
        m = evaluate_run(run, dm.val_qrels)
        return {"val/ndcg@10": m["ndcg@10"], "val/mrr@10": m["mrr@10"], "val/recall@100": m["recall@100"]}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.sanity_checking or dm is None or not getattr(dm, "val_queries", None):
            return
        metrics = self.evaluate(trainer, pl_module) if trainer.is_global_zero else None
        metrics = trainer.strategy.broadcast(metrics, src=0)
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        log.info(
            "epoch %d retrieval: %s", trainer.current_epoch, {k: round(v, 4) for k, v in metrics.items()}
        )
        pl_module.log_dict(metrics, prog_bar=True, sync_dist=False)
