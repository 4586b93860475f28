"""DeepSpeed for `trainer=deepspeed*`: Lightning's `DeepSpeedStrategy` on GPUs, a CPU-capable subclass otherwise.

Lightning's DeepSpeedStrategy refuses to run without CUDA, although DeepSpeed itself runs ZeRO 1/2/3 on
CPU over gloo. `CPUDeepSpeedStrategy` changes three private methods of Lightning 2.6 (pinned `<2.7` in
pyproject, covered by `tests/test_deepspeed.py`); on a CUDA accelerator each defers to Lightning unchanged.

`deepspeed_strategy` is the `_target_` of `conf/trainer/deepspeed*.yaml`: it picks the class and the
precision for the device at hand (fp16 with dynamic loss scaling on GPUs as SimLM; fp32 on CPU, where
bf16 is several times slower without bf16 units).
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import torch
from lightning_fabric.utilities.seed import reset_seed
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.plugins.precision import DeepSpeedPrecision
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy, also on CPU processes (gloo): only fit is covered.

    Standalone `trainer.validate/test/predict` take Lightning's inference path
    (`_initialize_deepspeed_inference`), which is not changed here and still needs a GPU.
    """

    def setup_environment(self) -> None:
        if isinstance(self.accelerator, CUDAAccelerator):
            super().setup_environment()
            return
        # skip the parent's CUDA-only check; the rest is what DDP does (device setup, then setup_distributed)
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        if isinstance(self.accelerator, CUDAAccelerator):
            super().setup_distributed()
            return
        # the parent's body without `_validate_device_index_selection` (CPU devices have no index)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        lr_scheduler: Any = None,
    ) -> tuple[Any, torch.optim.Optimizer]:
        import deepspeed

        # Lightning passes `root_device.index`, which is None on CPU and fails in DeepSpeed's engine
        device_rank = self.root_device.index if self.root_device.index is not None else self.local_rank
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=device_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer


def use_cuda(device_type: str | None = "auto") -> bool:
    """Whether training will run on CUDA: `device_type` (trainer.accelerator) allows it and a GPU exists."""
    return str(device_type or "auto").lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def deepspeed_strategy(
    config: dict[str, Any] | DictConfig,
    device_type: str | None = "auto",
    precision: str | None = None,
    **kwargs: Any,
) -> DeepSpeedStrategy:
    """A DeepSpeed strategy for `config` (a DeepSpeed config dict) on the devices `device_type` selects.

    GPU: Lightning's `DeepSpeedStrategy`; CPU: `CPUDeepSpeedStrategy`, with `DS_ACCELERATOR=cpu` set
    unless already set. `precision=None` means `16-mixed` on GPUs (DeepSpeed fp16 with the loss-scale
    settings in `kwargs`) and `32-true` on CPU. The precision chosen here wins over `trainer.precision`.
    `kwargs` go to the strategy (e.g. `initial_scale_power`, `logging_level`).
    """
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    config = dict(config)
    # DeepSpeed's ZeRO calls torch.distributed functions that warn on every step
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    cuda = use_cuda(device_type)
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    precision = precision or ("16-mixed" if cuda else "32-true")
    cls = DeepSpeedStrategy if cuda else CPUDeepSpeedStrategy
    return cls(config=config, precision_plugin=DeepSpeedPrecision(precision), **kwargs)
