"""The one place that knows where and how inference runs: device, ranks, process group, precision.

Training stages get all of this from Lightning. The inference stages (encode, search, rerank,
teacher scores) and the callbacks that encode between epochs are plain torch, launched as one
process or by torchrun (one process per device); they build a :class:`Runtime` from the composed
config and ask it for the device, "am I the main process", an ``autocast()`` context and the
process-group plumbing (join, barrier, broadcast, leave).

Precision strings follow Lightning's names (``trainer.precision``); :func:`parse_precision` is the
only parser, so ``bf16-mixed`` can never turn into float16 autocast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "Runtime",
    "autocast",
    "autocast_dtype",
    "batch_token_budget",
    "cpu_has_native_bf16",
    "is_distributed",
    "is_main_process",
    "length_sorted_batches",
    "parse_precision",
    "rank",
    "rank_slice",
    "resolve_device",
    "resolve_precision",
    "world_size",
]

# canonical name -> the spellings Lightning (and users) write for it
PRECISIONS: dict[str, tuple[str, ...]] = {
    "32-true": ("32-true", "32"),
    "16-mixed": ("16-mixed", "16"),
    "bf16-mixed": ("bf16-mixed", "bf16"),
}


def parse_precision(value: str | int | None) -> str:
    """The canonical precision (`32-true`, `16-mixed` or `bf16-mixed`) of a `trainer.precision` value.

    `None` (a strategy that sets its own precision, e.g. DeepSpeed's config) means full precision for
    inference. Anything else raises a `ValueError` naming the accepted values.
    """
    if value is None:
        return "32-true"
    text = str(value).strip().lower()
    for canonical, spellings in PRECISIONS.items():
        if text in spellings:
            return canonical
    accepted = ", ".join(s for spellings in PRECISIONS.values() for s in spellings)
    raise ValueError(f"unknown precision {value!r}: use one of {accepted}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX tiles).

    There bf16 autocast is about twice as fast as fp32; on AVX2-only CPUs it is several times slower.
    Asks torch's CPU capability probes, then the kernel's CPU flags. `SIMLM_CPU_BF16=1` / `0` overrides the
    detection (a CPU it gets wrong; the test suite pins 0 so numerical tests are fp32 on every machine).
    """
    forced = os.environ.get("SIMLM_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"SIMLM_CPU_BF16 must be 0 or 1 (or unset: detect), got {forced!r}")
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        supported = getattr(torch.cpu, probe, None)
        if supported is not None and supported():
            return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


_LOGGED: set[str] = set()


def resolve_precision(value: str | int | None, device_type: str) -> str:
    """`trainer.precision` for `device_type`, with `auto` chosen for the hardware (logged once per run).

    `auto`: `bf16-mixed` on a CPU with native bf16, `32-true` on other CPUs, `16-mixed` on GPUs
    (SimLM's fp16 mixed precision). Any explicit value wins and goes through `parse_precision`.
    """
    if str(value).strip().lower() != "auto":
        return parse_precision(value)
    if device_type == "cuda":
        chosen, why = "16-mixed", "GPU: SimLM's fp16 mixed precision"
    elif cpu_has_native_bf16():
        chosen, why = "bf16-mixed", "CPU has native bf16"
    else:
        chosen, why = "32-true", "CPU has no native bf16, where bf16 is slower than fp32"
    message = f"precision: {chosen} ({why})"
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info("%s", message)
    return chosen


def autocast_dtype(precision: str | int | None, device_type: str) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device_type`, or None for full precision.

    `16-mixed` is float16 on CUDA only (float16 matmuls on a CPU are slow and lose accuracy);
    `bf16-mixed` is bfloat16 on CUDA and on the CPU.
    """
    canonical = parse_precision(precision)
    if canonical == "bf16-mixed":
        return torch.bfloat16
    if canonical == "16-mixed" and device_type == "cuda":
        return torch.float16
    return None


def autocast(precision: str | int | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """`torch.autocast` for `precision` on `device`, or a no-op context for full precision."""
    device_type = torch.device(device).type
    dtype = autocast_dtype(precision, device_type)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


# Padded tokens per inference batch on a CPU. Past this the activations and attention matrices outgrow
# the caches and throughput drops (MiniLM at 256 tokens: batch 32 beats batch 128, see
# benchmarks/bench_st_encode.py); a GPU wants the widest batch that fits, so it gets no cap.
CPU_BATCH_TOKENS = 8192


def batch_token_budget(device: torch.device | str) -> int | None:
    """The padded-token cap per inference batch on `device` (None: no cap)."""
    return CPU_BATCH_TOKENS if torch.device(device).type == "cpu" else None


def length_sorted_batches(
    lengths: np.ndarray | list[int], batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Row indices in longest-first batches of at most `batch_size` rows and, when `max_tokens` is set,
    at most `max_tokens` padded tokens (rows x the batch's longest row; a row longer than the cap gets a
    batch of its own). Every row appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = batch_size
        if max_tokens is not None:
            rows = min(rows, max(1, max_tokens // max(int(lengths[order[start]]), 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def resolve_device(accelerator: str | None = "auto", local_rank: int = 0) -> torch.device:
    """`cuda:<local_rank>` if CUDA is available and `accelerator` allows it (auto/gpu/cuda), else CPU."""
    if str(accelerator or "auto").lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Whether this process is rank 0 of its group, or, with no group (yet or any more), of its launch
    (torchrun's `RANK`): the one process that writes shared outputs."""
    return (dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))) == 0


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous `[start, end)` of `n` items for `rank` (slice sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return n * rank // world_size, n * (rank + 1) // world_size


@dataclass
class Runtime:
    """Device, ranks and precision of an inference stage (see the module docstring)."""

    device: torch.device
    precision: str = "32-true"
    local_rank: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> Runtime:
        """From the composed config: `trainer.accelerator`, `trainer.precision` (`auto` allowed), torchrun's
        `LOCAL_RANK`."""
        trainer = cfg.get("trainer") or {}
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(trainer.get("accelerator", "auto"), local_rank)
        precision = resolve_precision(trainer.get("precision", "32-true"), device.type)
        return cls(device=device, precision=precision, local_rank=local_rank)

    @property
    def rank(self) -> int:
        return rank()

    @property
    def world_size(self) -> int:
        return world_size()

    @property
    def is_main(self) -> bool:
        return is_main_process()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for this runtime's precision on its device (a no-op at full precision)."""
        return autocast(self.precision, self.device)

    def slice(self, n: int) -> tuple[int, int]:
        """This rank's contiguous `[start, end)` of `n` items."""
        return rank_slice(n, self.rank, self.world_size)

    @contextlib.contextmanager
    def process_group(self) -> Iterator[bool]:
        """Join the process group torchrun describes (`WORLD_SIZE` > 1) for the block; leave it after.

        Yields whether this call created the group (an existing group, e.g. Lightning's, is reused and
        left alone).
        """
        created = (
            dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        )
        if created:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        try:
            yield created
        finally:
            if created:
                dist.destroy_process_group()

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if is_distributed() and dist.get_world_size() > 1:
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """`obj` of rank `src` on every rank (picklable objects; the identity in one process)."""
        if not (is_distributed() and dist.get_world_size() > 1):
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (`[obj]` in one process)."""
        if not (is_distributed() and dist.get_world_size() > 1):
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
