"""AdamW and SimLM's learning-rate schedule: warmup (DeepSpeed's log shape or linear), then linear decay to 0."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_decay_factor(step: int, warmup_steps: int, total_steps: int, warmup_type: str = "log") -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    log (DeepSpeed WarmupDecayLR default, used by SimLM): log(step + 1) / log(warmup), warmup clamped to >= 2;
    linear: (step + 1) / warmup. After warmup: (total - step) / (total - warmup), floored at 0.
    """
    if warmup_type not in ("log", "linear"):
        raise ValueError(f"warmup_type must be 'log' or 'linear', got {warmup_type!r}")
    if step < warmup_steps:
        if warmup_type == "log":
            return math.log(step + 1) / math.log(max(warmup_steps, 2))
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_supported(params: list[torch.nn.Parameter]) -> bool:
    """Whether AdamW's fused kernel applies: every parameter on one CPU or CUDA device type, in a float
    dtype it handles. It does the same update as the default per-tensor loop, one pass over each tensor
    instead of several (on the CPU a 3-4x faster optimizer step)."""
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= {"cpu", "cuda"} and all(p.dtype in FUSED_DTYPES for p in params)


def build_optimizer(
    module: torch.nn.Module,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    warmup_type: str = "log",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    param_lrs: Mapping[str, float] | None = None,
    fused: bool | None = None,
):
    """AdamW (no decay on biases and LayerNorm weights) + the warmup/decay schedule, stepped every optimizer step.

    `param_lrs` maps parameter names to their own peak lr (e.g. a newly initialised head); the schedule
    scales every group alike. `fused`: AdamW's fused kernel (None: wherever `fused_supported`).
    """
    param_lrs = dict(param_lrs or {})
    unknown = set(param_lrs) - {name for name, _ in module.named_parameters()}
    if unknown:
        raise ValueError(f"param_lrs names parameters the module does not have: {sorted(unknown)[:5]}")
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name)
        groups.setdefault((decays, param_lrs.get(name, lr)), []).append(param)
    param_groups = [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": group_lr}
        for (decays, group_lr), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]
    params = [p for group in param_groups for p in group["params"]]
    if fused is None:
        fused = fused_supported(params)
    optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, fused=fused)
    scheduler = LambdaLR(
        optimizer, lambda step: warmup_decay_factor(step, warmup_steps, total_steps, warmup_type)
    )
    return optimizer, scheduler
