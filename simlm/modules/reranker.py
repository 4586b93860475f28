"""CrossEncoderReranker LightningModule: SimLM's re-ranker (listwise CE over groups, R-Drop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from simlm.evaluation import evaluate_run
from simlm.losses import listwise_ce, rdrop_loss, select_hard_passages
from simlm.models.cross_encoder import load_reranker_model
from simlm.modules.common import set_sampling_epoch, warmup_decay_optimizers
from simlm.retrieval.rerank import merge_reranked, scores_by_query


class CrossEncoderReranker(pl.LightningModule):
    """One-logit cross-encoder trained with listwise CE over each query's group (positive first).

    `forward_factor` f > 1: the n sampled passages are scored without gradients in eval mode, the
    positive is forced to the top and the n/f highest are trained on (the positive + the hardest
    negatives). `rdrop`: the kept rows run twice (two dropout samples) and the loss is
    `simlm.losses.rdrop_loss` (CE on both + `rdrop_weight` x symmetric KL). Validation scores the
    datamodule's `val_pairs` and logs `val/mrr@10` and `val/ndcg@10` of the re-ranked `val_run`, and
    `val/group_acc` (`group_accuracy`: SimLM's model-selection metric).
    `head_lr`: peak lr of the weights the checkpoint lacked (a fresh classification head); default `lr`.
    `attention_dropout`: the backbone's attention dropout (`model.attention_dropout`; None: the checkpoint's).
    """

    def __init__(
        self,
        model_name_or_path: str,
        lr: float = 3e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        warmup_type: str = "log",
        forward_factor: int = 1,
        rdrop: bool = True,
        rdrop_weight: float = 1.0,
        head_lr: float | None = None,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if forward_factor < 1:
            raise ValueError(f"forward_factor must be >= 1, got {forward_factor}")
        self.model, new_weights = load_reranker_model(
            model_name_or_path, with_new_weights=True, attention_dropout=attention_dropout
        )
        # a checkpoint without a classification head gets a random one: `head_lr` lets it catch up
        # with the pretrained encoder in short schedules (SimLM trains one lr for thousands of steps)
        self.param_lrs = {f"model.{name}": head_lr for name in new_weights} if head_lr else {}
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds
        self._val_index: list[Tensor] = []
        self._val_scores: list[Tensor] = []

    # ------------------------------------------------------------------ scoring and loss
    def forward(self, pairs: dict[str, Tensor]) -> Tensor:
        """Raw logits `[rows]` of tokenised pairs."""
        return self.model(**pairs).logits[:, 0]

    @torch.no_grad()
    def select_hard(self, pairs: dict[str, Tensor], groups: int, n: int) -> tuple[dict[str, Tensor], int]:
        """Rows of the positive + the hardest n/f - 1 negatives of each group (scored in eval mode)."""
        f = self.hparams.forward_factor
        if f == 1:
            return pairs, n
        if n % f:
            raise ValueError(f"train_n_passages ({n}) must be divisible by forward_factor ({f})")
        keep = n // f
        was_training = self.model.training
        self.model.eval()
        try:
            scores = self(pairs).view(groups, n).float()
        finally:
            self.model.train(was_training)
        picked = select_hard_passages(scores, keep)
        rows = (torch.arange(groups, device=picked.device).unsqueeze(1) * n + picked).reshape(-1)
        sub = {k: v[rows] for k, v in pairs.items()}
        length = int(sub["attention_mask"].sum(dim=1).max())  # drop columns that are padding everywhere
        return {k: v[:, :length] for k, v in sub.items()}, keep

    def training_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Loss to back-propagate and the metrics to log (`loss`, group accuracy `acc`)."""
        groups, n = batch["scores"].shape
        pairs, k = self.select_hard(batch["pairs"], groups, n)
        if self.hparams.rdrop:
            both = self({key: torch.cat([v, v]) for key, v in pairs.items()}).float()
            logits_a, logits_b = both[: groups * k].view(groups, k), both[groups * k :].view(groups, k)
            loss = rdrop_loss(logits_a, logits_b, self.hparams.rdrop_weight)
        else:
            logits_a = self(pairs).float().view(groups, k)
            loss = listwise_ce(logits_a)
        acc = (logits_a.detach().argmax(dim=1) == 0).float().mean().item()
        return loss, {"loss": loss.item(), "acc": acc}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics = self.training_loss(batch)
        bs = batch["scores"].shape[0]
        self.log("train/loss", metrics["loss"], prog_bar=True, batch_size=bs)
        self.log("train/acc", metrics["acc"], batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation: re-rank a run
    def on_validation_epoch_start(self) -> None:
        self._val_index, self._val_scores = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_index.append(batch["index"])
        self._val_scores.append(self(batch["pairs"]).float())

    def on_validation_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        if self.trainer.sanity_checking or not self._val_index or not getattr(dm, "val_pairs", None):
            return
        index = torch.cat(self._val_index)
        scores = torch.cat(self._val_scores)
        if self.trainer.world_size > 1:  # every rank scored its share (padded with repeats): gather all
            index = self.all_gather(index).reshape(-1)
            scores = self.all_gather(scores).reshape(-1)
        by_query = scores_by_query([dm.val_pairs[i] for i in index.tolist()], scores.tolist())
        reranked = merge_reranked(dm.val_run, by_query, dm.val_depth)
        metrics = evaluate_run(reranked, dm.val_qrels, mrr_threshold=dm.mrr_threshold)
        self.log_dict(
            {
                "val/mrr@10": metrics["mrr@10"],
                "val/ndcg@10": metrics["ndcg@10"],
                "val/group_acc": group_accuracy(by_query, dm.val_qrels),
            },
            prog_bar=True,
            sync_dist=False,
        )
        self._val_index, self._val_scores = [], []

    # ------------------------------------------------------------------ epochs, optimisation, saving
    def on_train_epoch_start(self) -> None:
        set_sampling_epoch(self)

    def configure_optimizers(self):
        return warmup_decay_optimizers(self)

    def save_model(self, out_dir: str | Path, tokenizer: Any | None = None) -> Path:
        """Save the re-ranker as a Hugging Face sequence-classification folder (+ tokenizer)."""
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        return out_dir


def group_accuracy(scores: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    """SimLM's re-ranker `acc`: the share of validation groups whose top-scored passage is a positive.

    A query's group is its scored candidates; queries whose candidates hold no positive (grade >= 1)
    are left out, as SimLM's groups always hold one. Ties go to the lower doc id. 0.0 without groups.
    """
    hits = []
    for qid, by_doc in scores.items():
        positives = {d for d, grade in qrels.get(qid, {}).items() if grade >= 1}
        if by_doc and positives & by_doc.keys():
            top = min(by_doc, key=lambda d: (-by_doc[d], d))
            hits.append(top in positives)
    return sum(hits) / len(hits) if hits else 0.0
