"""Exact inner-product search over embedding shards with a running, tie-aware top-k merge.

Every shard is searched for each block of queries, and its candidates are merged into the running
top-k by `(-score, corpus row)`, so score ties go to the lower corpus row, as in SimLM. faiss and
`torch.topk` order tied scores arbitrarily, and may cut a tie group at the k-th place. Each shard is
therefore searched a few places deeper than k. A query whose k-th score still equals the deepest score
fetched is re-scored exactly over that shard (numpy, stable order). The result is deterministic
whatever the backend does with ties.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simlm.data.formats import Run
from simlm.runtime import rank_slice

if TYPE_CHECKING:
    from simlm.retrieval.store import Block

log = logging.getLogger(__name__)

BACKENDS = ("faiss", "torch")
TIE_MARGIN = 32  # extra depth fetched per shard so boundary ties rarely need the exact fallback
FAISS_GPU_MAX_K = 2048  # faiss GPU k-selection limit


class _FaissShard:
    def __init__(self, emb: np.ndarray, fp16_storage: bool) -> None:
        import faiss

        self.faiss = faiss
        # no copy for a float32 block (a memory-mapped shard is read in place)
        self.emb32 = np.ascontiguousarray(emb, dtype=np.float32)
        d = self.emb32.shape[1]
        self.gpu_index = None
        if faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU on the test machines
            config = faiss.GpuIndexFlatConfig()
            config.useFloat16 = fp16_storage
            config.device = _cuda_index() % faiss.get_num_gpus()  # this process's GPU
            self._gpu_resources = faiss.StandardGpuResources()
            self.gpu_index = faiss.GpuIndexFlatIP(self._gpu_resources, d, config)
            self.gpu_index.add(self.emb32)

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.gpu_index is not None and k <= FAISS_GPU_MAX_K:  # pragma: no cover
            return self.gpu_index.search(queries, k)
        # brute force without an index: IndexFlatIP would hold a second copy of the block
        return self.faiss.knn(queries, self.emb32, k, metric=self.faiss.METRIC_INNER_PRODUCT)


class _TorchShard:
    def __init__(self, emb: np.ndarray, fp16_storage: bool) -> None:
        import torch

        self.torch = torch
        # this process's GPU (the search stage sets it per rank), else the CPU
        self.device = (
            torch.device("cuda", _cuda_index()) if torch.cuda.is_available() else torch.device("cpu")
        )
        # fp16 matmuls only on a GPU; on a CPU they are slow and less exact
        self.dtype = torch.float16 if fp16_storage and self.device.type == "cuda" else torch.float32
        self.emb32 = np.ascontiguousarray(emb, dtype=np.float32)
        source = np.ascontiguousarray(emb) if self.dtype == torch.float16 else self.emb32
        self.emb = torch.from_numpy(source).to(self.device, self.dtype)  # no copy for float32 on a CPU

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            q = torch.from_numpy(queries).to(self.device, self.dtype)
            values, idx = torch.topk(q @ self.emb.T, k, dim=1, largest=True, sorted=True)
            return values.float().cpu().numpy(), idx.cpu().numpy()


def _cuda_index() -> int:
    """The current CUDA device of this process (0 without CUDA)."""
    import torch

    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def _exact_topk(
    queries: np.ndarray, emb32: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by `(-score, row)` from full scores: local indices, in order."""
    scores = queries @ emb32.T
    order = np.lexsort((np.broadcast_to(rows, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top `top_k` by `(-score, row)` of several `(scores [Q, k_i], rows [Q, k_i])` results of the same
    queries (e.g. of disjoint shards), padded with -inf / -1 when they hold fewer than `top_k` rows."""
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in parts], axis=1)
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for _, r in parts], axis=1)
    if scores.shape[1] < top_k:
        pad = top_k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    # padding (row -1, score -inf) sorts last: by score first, and no real score is -inf
    order = np.lexsort((rows, -scores), axis=1)[:, :top_k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def search(
    query_emb: np.ndarray,
    shards: Iterable[tuple[np.ndarray, np.ndarray]],
    top_k: int,
    backend: str = "faiss",
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum inner-product top-k of `query_emb [Q, d]` over `(rows, embeddings)` shards.

    Returns `(scores [Q, k] float32, rows [Q, k] int64)` best first, ties broken by the lower corpus row.
    When the shards hold fewer than `top_k` passages the tail is padded with score -inf and row -1.
    `backend="faiss"`: faiss's brute-force `knn` (on a GPU, `GpuIndexFlatIP` with fp16 storage for fp16
    shards, when faiss sees one); `"torch"`: matmul + `topk`, on CUDA when available. Shards are
    processed one at a time; a float32 shard (or memory-mapped block) is read in place, a float16 one
    converted shard by shard.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    queries = np.ascontiguousarray(query_emb, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"query embeddings must be 2-d, got shape {queries.shape}")
    n_queries, dim = queries.shape
    best_scores = np.full((n_queries, top_k), -np.inf, dtype=np.float32)
    best_rows = np.full((n_queries, top_k), -1, dtype=np.int64)
    shard_type = _FaissShard if backend == "faiss" else _TorchShard
    for rows, emb in shards:
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        if emb.shape != (n, dim):
            raise ValueError(f"a shard of shape {emb.shape} does not match {n} rows of dimension {dim}")
        if n == 0 or n_queries == 0:
            continue
        shard: Any = shard_type(emb, fp16_storage=emb.dtype == np.float16)
        k = min(top_k, n)
        k_fetch = min(n, k + TIE_MARGIN)
        for start in range(0, n_queries, batch_size):
            end = min(n_queries, start + batch_size)
            block = queries[start:end]
            scores, local = shard.topk(block, k_fetch)
            scores = np.asarray(scores, dtype=np.float32)
            local = np.asarray(local, dtype=np.int64)
            if k_fetch < n:
                # the tie group at the k-th place may continue beyond what was fetched
                cut = np.flatnonzero(scores[:, k - 1] == scores[:, k_fetch - 1])
                if len(cut):
                    scores[cut], local[cut] = _exact_topk(block[cut], shard.emb32, rows, k_fetch)
            best_scores[start:end], best_rows[start:end] = merge_topk(
                [(best_scores[start:end], best_rows[start:end]), (scores, rows[local])], top_k
            )
        del shard, emb  # a memory-mapped shard is unmapped before the next one is mapped
    return best_scores, best_rows


@dataclass(frozen=True)
class ExactSearch:
    """Exact search of an embeddings folder, block by block (`simlm.retrieval.store.iter_blocks`).

    Memory-mapped (`mmap`, the default), memory holds one shard's pages, one block in float32 and the
    queries, whatever the corpus size. `part(rank, world_size)` is one process's contiguous share of the
    blocks: the shares' results merged with `merge_topk` equal one process's search of all blocks.
    """

    emb_dir: Path
    backend: str = "faiss"
    mmap: bool = True
    block_rows: int | None = None
    blocks: tuple[Block, ...] | None = None  # None: every block of the folder

    def all_blocks(self) -> tuple[Block, ...]:
        """This search's blocks (all of the folder's unless it is a part)."""
        from simlm.retrieval.store import (
            plan_blocks,
            read_manifest,
        )  # the store pulls in torch and the models

        if self.blocks is not None:
            return self.blocks
        return tuple(plan_blocks(read_manifest(self.emb_dir), self.block_rows))

    def part(self, rank: int, world_size: int) -> ExactSearch:
        """The search of this rank's contiguous slice of the blocks."""
        blocks = self.all_blocks()
        start, end = rank_slice(len(blocks), rank, world_size)
        return replace(self, blocks=blocks[start:end])

    def search(
        self, queries: np.ndarray, top_k: int, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` over the blocks: `(scores [Q, k], corpus rows [Q, k])`."""
        from simlm.retrieval.store import iter_blocks

        shards = iter_blocks(self.emb_dir, self.all_blocks(), mmap=self.mmap)
        return search(queries, shards, top_k, backend=self.backend, batch_size=batch_size)


@dataclass(frozen=True)
class MemorySearch:
    """Exact search of `(rows, embeddings)` shards already in memory (e.g. a corpus encoded just now)."""

    shards: Sequence[tuple[np.ndarray, np.ndarray]]
    backend: str = "faiss"

    def search(
        self, queries: np.ndarray, top_k: int, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` over the shards: `(scores [Q, k], corpus rows [Q, k])`."""
        return search(queries, self.shards, top_k, backend=self.backend, batch_size=batch_size)


def to_run(qids: Sequence[str], scores: np.ndarray, rows: np.ndarray, corpus: Any) -> Run:
    """A `Run` (`qid -> [(doc_id, score)]`, ranking order kept) from `search` output; row -1 padding dropped."""
    import pyarrow as pa

    if len(qids) != len(rows):
        raise ValueError(f"{len(qids)} query ids for {len(rows)} result rows")
    valid = rows >= 0
    unique = np.unique(rows[valid])
    doc_ids = np.asarray(
        corpus.table.column("id").take(pa.array(unique, pa.int64())).to_pylist(), dtype=object
    )
    run: Run = {}
    for qid, q_scores, q_rows, q_valid in zip(qids, scores, rows, valid):
        ids = doc_ids[np.searchsorted(unique, q_rows[q_valid])]
        run[qid] = list(zip(ids.tolist(), q_scores[q_valid].astype(float).tolist()))
    return run
