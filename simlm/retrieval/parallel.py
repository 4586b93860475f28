"""Dense search split across the processes of a run (torchrun, or `trainer.devices=N`): same results as one.

Queries are encoded by all ranks together: the length-sorted batches one process would encode are dealt
out to the ranks (batch i to rank i mod N) and the vectors gathered, so every rank holds exactly the
vectors one process computes. The search is then split one of two ways:

- `shards`: each rank searches every query over its contiguous slice of the shard blocks, and the
  per-rank top-k lists are merged by `(-score, row)` (exact search of an embeddings folder: each rank
  reads 1/N of the corpus, a GPU holds 1/N of it);
- `queries`: each rank searches its slice of the queries (whole query blocks) over everything, and the
  slices are concatenated (a faiss index, which every rank loads; in-memory passages).

Either way each block of work is the one a single process does, so the merged result equals its result.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from simlm.models.encoder import TextEncoder
from simlm.retrieval.encoding import encode_features, tokenize_texts
from simlm.retrieval.index import merge_topk
from simlm.runtime import Runtime, rank_slice

DISTRIBUTE = ("auto", "shards", "queries")
GATHER_QUERIES = 8192  # queries per all-gather of results: bounds what one collective pickles


class Searchable(Protocol):
    """Anything `search_across_ranks` can search: exact shards, in-memory shards, a faiss index."""

    def search(
        self, queries: np.ndarray, top_k: int, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]: ...


def query_slice(n_queries: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous `[start, end)` of the queries, in whole blocks of `batch_size`."""
    blocks = -(-n_queries // batch_size)
    first, last = rank_slice(blocks, rank, world_size)
    return min(n_queries, first * batch_size), min(n_queries, last * batch_size)


def encode_across_ranks(
    encoder: TextEncoder,
    tokenizer: Any,
    runtime: Runtime,
    *,
    queries: list[str] | None = None,
    titles: list[str] | None = None,
    texts: list[str] | None = None,
    batch_size: int = 128,
    precision: str | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """`encode_texts` with its length-sorted batches dealt out to the ranks; every rank gets all rows."""
    features, is_query = tokenize_texts(tokenizer, encoder.settings, queries, titles, texts)
    world = runtime.world_size
    kwargs = {
        "is_query": is_query,
        "batch_size": batch_size,
        "device": runtime.device,
        "precision": precision,
    }
    if world == 1:
        return encode_features(encoder, tokenizer, features, progress=progress, **kwargs)
    n = len(features["input_ids"])
    lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")  # encode_features' order, so the batches are its batches
    starts = range(runtime.rank * batch_size, n, world * batch_size)
    mine = np.concatenate([order[s : s + batch_size] for s in starts] or [np.empty(0, dtype=np.int64)])
    # the concatenated batches are still longest-first, so encode_features keeps them as they are
    local = encode_features(
        encoder,
        tokenizer,
        {k: [v[i] for i in mine] for k, v in features.items()},
        progress=progress,
        **kwargs,
    )
    out = np.empty((n, local.shape[1]), dtype=np.float32)
    for rows, vectors in runtime.gather((mine, local)):
        out[rows] = vectors
    return out


def resolve_distribute(distribute: str, target: Any) -> str:
    """`auto` is `shards` for a target that can be split by shards (`part`), else `queries`."""
    if distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {DISTRIBUTE}, got {distribute!r}")
    splittable = hasattr(target, "part")
    if distribute == "auto":
        return "shards" if splittable else "queries"
    if distribute == "shards" and not splittable:
        raise ValueError(
            "stage.distribute=shards splits exact search over stage.embeddings_dir; a faiss index or "
            "passages encoded in memory are split by queries (stage.distribute=queries or auto)"
        )
    return distribute


def search_across_ranks(
    queries: np.ndarray,
    target: Searchable,
    top_k: int,
    runtime: Runtime,
    *,
    distribute: str = "auto",
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """`target.search(queries, top_k, batch_size)` with the work split across the ranks (see the module
    docstring); every rank returns the whole `(scores [Q, k], rows [Q, k])`."""
    world = runtime.world_size
    if world == 1:
        return target.search(queries, top_k, batch_size)
    mode = resolve_distribute(distribute, target)
    n = len(queries)
    scores = np.empty((n, top_k), dtype=np.float32)
    rows = np.empty((n, top_k), dtype=np.int64)
    if mode == "shards":
        local_scores, local_rows = target.part(runtime.rank, world).search(queries, top_k, batch_size)  # type: ignore[attr-defined]
        for a in range(0, n, GATHER_QUERIES):
            b = min(n, a + GATHER_QUERIES)
            parts = runtime.gather((local_scores[a:b], local_rows[a:b]))
            scores[a:b], rows[a:b] = merge_topk(parts, top_k)
        return scores, rows
    lo, hi = query_slice(n, batch_size, runtime.rank, world)
    local_scores, local_rows = target.search(queries[lo:hi], top_k, batch_size)
    for a in range(0, max(n, 1), GATHER_QUERIES):
        b = min(n, a + GATHER_QUERIES)
        s, e = max(a, lo), max(min(b, hi), max(a, lo))  # this rank's queries inside [a, b)
        for start, part_scores, part_rows in runtime.gather(
            (s, local_scores[s - lo : e - lo], local_rows[s - lo : e - lo])
        ):
            scores[start : start + len(part_scores)] = part_scores
            rows[start : start + len(part_rows)] = part_rows
    return scores, rows
