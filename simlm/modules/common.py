"""Pieces every training LightningModule shares: the optimizer/schedule and the epoch-aware sampling."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl

from simlm.optim import build_optimizer


def warmup_decay_optimizers(module: pl.LightningModule) -> dict[str, Any]:
    """`configure_optimizers` output: AdamW + SimLM's warmup/linear-decay schedule stepped every step.

    Reads `lr`, `weight_decay`, `warmup_steps` and `warmup_type` from the module's hyper-parameters, and
    per-parameter peak lrs from the module's `param_lrs` attribute when it has one.
    """
    hp = module.hparams
    total = int(module.trainer.estimated_stepping_batches)
    if not math.isfinite(total) or total <= 0:
        total = max(hp.warmup_steps, 1)
    optimizer, scheduler = build_optimizer(
        module,
        hp.lr,
        hp.weight_decay,
        hp.warmup_steps,
        total,
        hp.warmup_type,
        param_lrs=getattr(module, "param_lrs", None),
        # Lightning's mixed-precision plugin refuses gradient clipping with an optimizer that unscales
        # gradients itself, which the fused kernel does: fused only at full precision
        fused=None if "mixed" not in str(module.trainer.precision) else False,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def set_sampling_epoch(module: pl.LightningModule) -> None:
    """Tell the training dataset the epoch: SimLM's negative window moves with it (offset = epoch + seed)."""
    dataset = getattr(module.trainer.train_dataloader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(module.current_epoch)
