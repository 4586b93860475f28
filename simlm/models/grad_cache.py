"""GradCache (Gao et al., 2021): contrastive batches larger than memory, with exactly the plain gradients.

`cached_encode(encode, features, chunk_size, params)` returns the embeddings of the whole batch as one
autograd node. Forward: every chunk of rows is encoded without a graph (the random state before each
chunk is recorded). Backward, given the loss's gradient with respect to the embeddings (computed once
over the whole, possibly all-gathered, batch): each chunk is re-encoded *with* its graph under the same
random state and autocast setting, and its parameter gradients are taken against its slice of the cached
gradient. Memory holds one chunk's activations instead of the batch's.

The parameter gradients are summed over chunks and returned as the node's gradients for `params`, so the
autograd engine accumulates every parameter once per backward: DDP's reducer and DeepSpeed ZeRO-1/2's
gradient hooks see an ordinary single backward (no `no_sync`, no manual optimisation), and Lightning's
automatic optimisation, gradient clipping and accumulation work unchanged.

Because dropout draws the same masks in both passes, the result equals the plain computation that
encodes the same chunks one after another with a graph; with dropout off it equals encoding the whole
batch at once (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["GradCacheSettings", "cached_encode", "chunk_features"]

Features = Mapping[str, Tensor]
EncodeFn = Callable[[Features], Tensor]


class GradCacheSettings:
    """Chunk sizes of one GradCache step: `query_chunk` query rows and `passage_chunk` passage rows."""

    def __init__(self, query_chunk: int, passage_chunk: int) -> None:
        for name, value in (("query_chunk", query_chunk), ("passage_chunk", passage_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"stage.module.grad_cache.{name} must be a positive integer (rows per chunk), got {value!r}"
                )
        self.query_chunk = query_chunk
        self.passage_chunk = passage_chunk

    @classmethod
    def parse(cls, value: Any) -> GradCacheSettings | None:
        """None/False: off; a mapping with `query_chunk` and `passage_chunk`; else a ValueError."""
        if value is None or value is False:
            return None
        if isinstance(value, GradCacheSettings):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                "stage.module.grad_cache must be null or {query_chunk: <int>, passage_chunk: <int>}, "
                f"got {value!r}"
            )
        unknown = sorted(set(value) - {"query_chunk", "passage_chunk"})
        missing = sorted({"query_chunk", "passage_chunk"} - set(value))
        if unknown or missing:
            raise ValueError(
                f"stage.module.grad_cache: unknown keys {unknown}, missing keys {missing} "
                "(expected query_chunk and passage_chunk)"
            )
        return cls(value["query_chunk"], value["passage_chunk"])

    def __repr__(self) -> str:
        return f"GradCacheSettings(query_chunk={self.query_chunk}, passage_chunk={self.passage_chunk})"


def chunk_features(features: Features, chunk_size: int) -> list[dict[str, Tensor]]:
    """Split a tokenised batch (tensors of equal first dimension) into row chunks of `chunk_size`."""
    rows = next(iter(features.values())).shape[0]
    return [
        {k: v[start : start + chunk_size] for k, v in features.items()}
        for start in range(0, rows, chunk_size)
    ]


class _RandomState:
    """The CPU (and current CUDA device's) generator state, to replay a chunk's dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_device = device.index if device.type == "cuda" else None
        if self.cuda_device is not None:
            self.cuda = torch.cuda.get_rng_state(self.cuda_device)

    def devices(self) -> list[int]:
        return [] if self.cuda_device is None else [self.cuda_device]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda_device is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)


class _AutocastState:
    """Whether (and in which dtype) autocast was on during the forward, to re-enter it in backward."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type)

    def context(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


class _CachedEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, encode: EncodeFn, chunks: list[dict[str, Tensor]], *params: Tensor) -> Tensor:
        device = next(iter(chunks[0].values())).device
        ctx.encode, ctx.chunks = encode, chunks
        ctx.autocast = _AutocastState(device.type)
        ctx.states, outputs = [], []
        for chunk in chunks:
            ctx.states.append(_RandomState(device))
            outputs.append(encode(chunk))  # forward() of a Function runs without a graph
        ctx.sizes = [out.shape[0] for out in outputs]
        ctx.save_for_backward(*params)
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad_embeddings: Tensor) -> tuple[Tensor | None, ...]:
        params = ctx.saved_tensors
        totals: list[Tensor | None] = [None] * len(params)
        for chunk, state, grad in zip(ctx.chunks, ctx.states, grad_embeddings.split(ctx.sizes)):
            # fork_rng: the replay must not move the generator past where the forward left it
            with torch.random.fork_rng(devices=state.devices()):
                state.restore()
                with torch.enable_grad(), ctx.autocast.context():
                    embeddings = ctx.encode(chunk)
                grads = torch.autograd.grad(embeddings, params, grad, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    totals[i] = g if totals[i] is None else totals[i] + g
        return (None, None, *totals)


def cached_encode(encode: EncodeFn, features: Features, chunk_size: int, params: Sequence[Tensor]) -> Tensor:
    """Embeddings `[rows, d]` of `features`, computed chunk by chunk with GradCache's backward.

    Args:
        encode: maps a tokenised chunk to its embeddings; must depend on the model only through `params`.
        features: tokenised batch (`input_ids`, `attention_mask`, ...), rows along dim 0.
        chunk_size: rows encoded at once (forward without a graph, backward with one).
        params: the trainable parameters `encode` uses (those with `requires_grad`).

    Returns:
        The concatenated embeddings; back-propagating through them fills the parameters' `.grad` with
        exactly what back-propagating through `torch.cat([encode(c) for c in chunks])` would.
    """
    trainable = [p for p in params if p.requires_grad]
    rows = len(next(iter(features.values())))
    if rows <= chunk_size:  # one chunk is the plain computation: no second forward
        return encode(features)
    if not torch.is_grad_enabled() or not trainable:
        return torch.cat([encode(c) for c in chunk_features(features, chunk_size)])
    return _CachedEncode.apply(encode, chunk_features(features, chunk_size), *trainable)
