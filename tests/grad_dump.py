"""A test-only Lightning callback: rank 0 saves the first optimizer step's (reduced) parameter gradients."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class FirstStepGradients(pl.Callback):
    """After the first backward, write `{name: gradient}` to `out` (rank 0); DeepSpeed's partitioned
    gradients are assembled with `deepspeed.utils.safe_get_full_grad`."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != 0:
            return
        grads = {}
        for name, param in pl_module.named_parameters():
            grad = param.grad
            if grad is None and getattr(trainer.strategy, "strategy_name", "") == "deepspeed":
                from deepspeed.utils import safe_get_full_grad

                grad = safe_get_full_grad(param)
            if grad is not None:
                grads[name] = grad.detach().float().cpu().clone()
        if trainer.is_global_zero:
            torch.save(grads, self.out)
