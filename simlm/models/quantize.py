"""Optional int8 dynamic quantisation of a model's Linear layers, for inference-only stages on a CPU."""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_MODES = (None, "int8")


def quantize(model: nn.Module, mode: str | None) -> nn.Module:
    """`model` with its `nn.Linear` layers dynamically quantised to int8 (`mode="int8"`), else unchanged.

    Weights are stored in int8 and activations quantised per batch; the rest (embeddings, LayerNorm)
    stays float. CPU only. The retrieval-quality cost is measured in the README.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"stage.quantize must be null or 'int8', got {mode!r}")
    if mode is None:
        return model
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("stage.quantize=int8 runs on the CPU only (trainer.accelerator=cpu)")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's eager-mode API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)
