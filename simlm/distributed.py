"""Small helpers around ``torch.distributed`` that degrade to single-process behaviour.

When no process group is initialised (CPU unit tests, a single device), ``world_size()`` is 1,
``rank()`` is 0 and :func:`gather_with_grad` is the identity, so the loss maths is the same code path
with W = 1 (spec section 12, item 15).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(t: Tensor) -> Tensor:
    """All-gather ``t`` over the default group, concatenated along dim 0 in rank order.

    Every rank must pass a tensor of the same shape. The slice belonging to this rank is ``t`` itself,
    so autograd flows into the local computation; the slices of the other ranks are received copies
    without gradient (the semantics of SimLM's ``dist_gather_tensor`` and of Lightning's
    ``all_gather(sync_grads=False)`` with the local tensor substituted back).

    Args:
        t: local tensor ``[B, ...]``.

    Returns:
        ``[W * B, ...]``; ``t`` unchanged when not distributed or when the world size is 1.
    """
    ws = world_size()
    if ws == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(ws)]
    dist.all_gather(parts, t.detach())
    parts[rank()] = t
    return torch.cat(parts, dim=0)
