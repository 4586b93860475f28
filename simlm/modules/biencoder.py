"""BiEncoder LightningModule: SimLM's Retriever 1/2 and, with `kd_alpha` set, the distilled retriever."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from simlm.distributed import rank, world_size
from simlm.losses import (
    contrastive_loss,
    contrastive_targets,
    inbatch_metrics,
    kd_loss,
    own_group_logits,
    temperature_at,
)
from simlm.models.encoder import TextEncoder
from simlm.models.grad_cache import GradCacheSettings, cached_encode
from simlm.modules.common import set_sampling_epoch, warmup_decay_optimizers


class BiEncoderModule(pl.LightningModule):
    """Dense bi-encoder trained with SimLM's full contrastive loss over all-gathered in-batch negatives.

    With `kd_alpha` set the loss is KL(teacher || student) over each query's own group (teacher = softmax
    of the batch's `scores`, raw re-ranker logits, divided by `kd_teacher_temperature`) + kd_alpha *
    contrastive loss (SimLM's `train_kd_biencoder.sh` recipe). `attention_dropout`: the backbone's (`model.attention_dropout`; None:
    the checkpoint's). `grad_cache`: `{query_chunk, passage_chunk}` encodes training batches with GradCache
    (`simlm.models.grad_cache`): the same loss and gradients, one chunk's activations in memory.
    """

    def __init__(
        self,
        model_name_or_path: str,
        settings: dict[str, Any] | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        warmup_type: str = "log",
        temperature: float = 0.02,
        t_warmup: bool = False,
        full_contrastive: bool = True,
        scaled_loss: bool = True,
        train_n_passages: int = 16,
        kd_alpha: float | None = None,
        kd_mask_hn: bool = False,
        kd_teacher_temperature: float = 1.0,
        attention_dropout: float | None = None,
        grad_cache: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.grad_cache = GradCacheSettings.parse(grad_cache)
        if kd_mask_hn and scaled_loss:
            raise ValueError("kd_mask_hn needs scaled_loss=false (the local-row loss), as in SimLM")
        self.encoder = TextEncoder.from_pretrained(
            model_name_or_path, attention_dropout=attention_dropout, **(settings or {})
        )
        self.encoder.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        gc = self.grad_cache
        if gc is None or not (self.training and torch.is_grad_enabled()):
            q = self.encoder.encode(batch["query"], is_query=True)
            p = self.encoder.encode(batch["passage"], is_query=False)
            return q, p
        params = list(self.encoder.parameters())
        q = cached_encode(partial(self.encoder.encode, is_query=True), batch["query"], gc.query_chunk, params)
        p = cached_encode(
            partial(self.encoder.encode, is_query=False), batch["passage"], gc.passage_chunk, params
        )
        return q, p

    def _group_size(self, batch: dict[str, Any]) -> int:
        return batch["scores"].shape[1]

    def compute_loss(self, batch: dict[str, Any], training: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to back-propagate and the metrics to log (mean losses, in-batch acc@1/acc@3/mrr)."""
        hp = self.hparams
        n = self._group_size(batch)
        t = (
            temperature_at(self.global_step, hp.warmup_steps, hp.temperature, hp.t_warmup)
            if training
            else hp.temperature
        )
        q, p = self(batch)
        mask_hn = bool(hp.kd_alpha is not None and hp.kd_mask_hn and training)
        loss, local_logits = contrastive_loss(
            q, p, n, t, full=hp.full_contrastive, scaled=hp.scaled_loss, mask_own_hard_negatives=mask_hn
        )
        factor = world_size() if hp.scaled_loss else 1
        world = world_size()
        start = rank() * q.shape[0]
        targets = contrastive_targets(q.shape[0], n, start, q.device)
        metrics = inbatch_metrics(local_logits, targets, num_passages=q.shape[0] * world * n)
        metrics["loss"] = loss.item() / factor
        if hp.kd_alpha is not None:
            teacher = batch["scores"]
            if torch.isnan(teacher).any():
                raise ValueError(
                    "KD needs a teacher score for every sampled passage (run stage=teacher_scores)"
                )
            kl = kd_loss(
                own_group_logits(local_logits, n, start),
                teacher.to(local_logits.dtype),
                hp.kd_teacher_temperature,
            )
            metrics["contrastive_loss"] = metrics["loss"]
            metrics["kd_loss"] = kl.item()
            metrics["loss"] = hp.kd_alpha * metrics["contrastive_loss"] + metrics["kd_loss"]
            loss = hp.kd_alpha * loss + kl
        return loss, metrics

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch, training=True)
        bs = batch["scores"].shape[0]
        loss_value = metrics.pop("loss")
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, prog_bar=False, batch_size=bs)
        self.log("train/loss", loss_value, prog_bar=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self.compute_loss(batch, training=False)
        self.log_dict(
            {f"val/inbatch_{k}": v for k, v in metrics.items()},
            batch_size=batch["scores"].shape[0],
            sync_dist=True,
        )

    # ------------------------------------------------------------------ epochs and optimisation
    def on_train_epoch_start(self) -> None:
        set_sampling_epoch(self)

    def configure_optimizers(self):
        return warmup_decay_optimizers(self)

    def save_model(self, out_dir: str | Path, tokenizer: Any | None = None) -> Path:
        """Save the encoder as a Hugging Face folder + tokenizer + retrieval settings."""
        return self.encoder.save_pretrained(out_dir, tokenizer)
