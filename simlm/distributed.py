"""All-gather that keeps the local slice differentiable (in-batch negatives across ranks).

When no process group is initialised (CPU unit tests, a single device), `world_size()` is 1, `rank()`
is 0 and :func:`gather_with_grad` is the identity, so the loss maths is the same code path with W = 1.
Ranks and the process group itself belong to `simlm.runtime`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from simlm.runtime import is_distributed, rank, world_size

__all__ = ["gather_with_grad", "is_distributed", "rank", "world_size"]


def gather_with_grad(t: Tensor) -> Tensor:
    """All-gather `t` over the default group, concatenated along dim 0 in rank order.

    Every rank must pass a tensor of the same shape. The slice belonging to this rank is `t` itself,
    so autograd flows into the local computation; the slices of the other ranks are received copies
    without gradient (the semantics of SimLM's `dist_gather_tensor` and of Lightning's
    `all_gather(sync_grads=False)` with the local tensor substituted back).

    Args:
        t: local tensor `[B, ...]`.

    Returns:
        `[W * B, ...]`; `t` unchanged when not distributed or when the world size is 1.
    """
    ws = world_size()
    if ws == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(ws)]
    dist.all_gather(parts, t.detach())
    parts[rank()] = t
    return torch.cat(parts, dim=0)
