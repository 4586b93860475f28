"""faiss indexes over an embeddings folder, approximate or exact: built once, searched many times.

    index.faiss      the index, from any faiss index-factory string (`Flat`, `HNSW32`, `IVF4096,PQ64`,
                     `OPQ64,IVF65536_HNSW32,PQ64`, ...), inner-product metric (SimLM's scores)
    rows.npy         int64 corpus row of each index id (ids follow the shards' manifest order)
    manifest.json    factory, metric, dim, count, parameters, file sizes, and the source embeddings'
                     manifest hash, model, settings and probe; written last, so it marks a complete build

Building reads the shards memory-mapped: the training sample (`train_size` rows drawn with a seed) and
then the vectors, added block by block, so the embeddings are never all in memory at once. The index
itself is: a `Flat` or `HNSW` index holds every vector in float32, an IVF-PQ index only its codes.
Searching reads the index memory-mapped where faiss can (`IO_FLAG_MMAP_IFC`: IVF lists and flat codes),
so only the parts a search touches become resident, and processes on one machine share those pages.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simlm.data.io import atomic_path, atomic_write, write_json
from simlm.retrieval.index import FAISS_GPU_MAX_K, TIE_MARGIN, merge_topk
from simlm.retrieval.store import (
    Block,
    EmbeddingMismatchError,
    iter_blocks,
    manifest_sha256,
    plan_blocks,
    read_manifest,
)

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.npy"
MANIFEST_FILE = "manifest.json"
INDEX_FORMAT = 1
METRIC = "inner_product"
# faiss trains k-means on at most 256 points per centroid; 64 per centroid is plenty for recall
TRAIN_POINTS_PER_LIST = 64
MIN_TRAIN_SIZE = 100_000


class IndexMismatchError(EmbeddingMismatchError):
    """A faiss index folder that is incomplete, corrupt, or built from other embeddings."""


def _faiss_message(error: Exception) -> str:
    """faiss's own words from its `Error in <function> at <file>:<line>: <message>` exceptions."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    found = re.search(r" at \S+:\d+: ?(.*)$", first)
    return (found.group(1) if found else first).strip() or first


def new_index(factory: str, dim: int) -> Any:
    """An empty inner-product faiss index of `dim`-d vectors from an index-factory string."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"stage.factory {factory!r} is not a faiss index-factory string for {dim}-d vectors: "
            f"{_faiss_message(e)}"
        ) from None


def ivf_lists(index: Any) -> int | None:
    """The number of inverted lists of an IVF index (through any wrapper), else None."""
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def _skip_polysemous_training(index: Any) -> None:
    """Turn off IVF-PQ's polysemous training: it only permutes the PQ centroids for Hamming-filtered
    search (`polysemous_ht`, never set here), leaves every score unchanged, and takes minutes."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return
    if getattr(ivf, "do_polysemous_training", False):
        ivf.do_polysemous_training = False


def default_train_size(index: Any, count: int) -> int:
    """Training rows when `train_size` is not given: 64 per inverted list, at least 100k, at most all."""
    lists = ivf_lists(index) or 0
    return min(count, max(MIN_TRAIN_SIZE, TRAIN_POINTS_PER_LIST * lists))


def training_sample(
    emb_dir: str | Path, manifest: dict[str, Any], size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`size` rows drawn without replacement (seeded) across all shards, as float32, with their positions.

    Shards are memory-mapped and only the drawn rows are read, shard by shard.
    """
    lengths = [s["end"] - s["start"] for s in manifest["shards"]]
    size = min(size, sum(lengths))
    positions = np.sort(np.random.default_rng(seed).choice(sum(lengths), size, replace=False))
    starts = np.cumsum([0, *lengths])
    picks = {}  # shard -> local offsets of its drawn rows
    for shard, n in enumerate(lengths):
        lo, hi = np.searchsorted(positions, [starts[shard], starts[shard] + n])
        if hi > lo:
            picks[shard] = positions[lo:hi] - starts[shard]
    sample = np.empty((size, manifest["dim"]), dtype=np.float32)
    filled = 0
    blocks = [Block(shard, 0, lengths[shard]) for shard in picks]
    for block, (_, emb) in zip(blocks, iter_blocks(emb_dir, blocks, mmap=True)):
        local = picks[block.shard]
        sample[filled : filled + len(local)] = emb[local]
        filled += len(local)
    return sample, positions


def build_index(
    emb_dir: str | Path,
    out_dir: str | Path,
    factory: str,
    *,
    train_size: int | None = None,
    seed: int = 0,
    add_batch_size: int = 65_536,
) -> dict[str, Any]:
    """Build a faiss index of the embeddings in `emb_dir` into `out_dir`; return its manifest.

    Trains (if the index type needs it) on `train_size` seeded rows (default: `default_train_size`),
    then adds the shards block by block (`add_batch_size` rows), never holding all embeddings in memory.
    Every file is written atomically and the manifest last; a previous manifest in `out_dir` is removed
    first, so an interrupted rebuild leaves a folder that search refuses rather than a mix of two builds.
    """
    import faiss

    emb_dir, out_dir = Path(emb_dir), Path(out_dir)
    source = read_manifest(emb_dir)
    dim, count = int(source["dim"]), int(source["corpus_size"])
    index = new_index(factory, dim)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)

    _skip_polysemous_training(index)

    started = time.perf_counter()
    trained_on = 0
    if not index.is_trained:
        size = default_train_size(index, count) if train_size is None else min(train_size, count)
        sample, _ = training_sample(emb_dir, source, size, seed)
        log.info("training %s on %d of %d vectors (seed %d)", factory, len(sample), count, seed)
        try:
            index.train(sample)
        except RuntimeError as e:
            raise ValueError(
                f"stage.factory {factory!r}: faiss could not train it on {len(sample)} vectors: "
                f"{_faiss_message(e)}"
            ) from None
        trained_on = len(sample)
        del sample
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    rows = np.empty(count, dtype=np.int64)
    added = 0
    for block_rows, emb in iter_blocks(emb_dir, plan_blocks(source, add_batch_size), mmap=True):
        index.add(np.ascontiguousarray(emb, dtype=np.float32))
        rows[added : added + len(block_rows)] = block_rows
        added += len(block_rows)
        log.info("added %d of %d vectors", added, count)
    add_seconds = time.perf_counter() - started

    with atomic_write(out_dir / ROWS_FILE, "wb") as f:
        np.save(f, rows)
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    manifest = {
        "format": INDEX_FORMAT,
        "factory": factory,
        "metric": METRIC,
        "dim": dim,
        "count": int(index.ntotal),
        "ivf_lists": ivf_lists(index),
        "trained_on": trained_on,
        "seed": seed,
        "train_seconds": round(train_seconds, 3),
        "add_seconds": round(add_seconds, 3),
        "index_bytes": (out_dir / INDEX_FILE).stat().st_size,
        "rows_bytes": (out_dir / ROWS_FILE).stat().st_size,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "source": {
            "embeddings_dir": str(emb_dir.resolve()),
            "manifest_sha256": manifest_sha256(emb_dir),
            "corpus_size": count,
            "dtype": source["dtype"],
            "model": source.get("model"),
            "settings": source.get("settings", {}),
            "probe": source.get("probe", []),
        },
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def read_index_manifest(index_dir: str | Path, corpus_size: int | None = None) -> dict[str, Any]:
    """The manifest of an index folder, checked against its files and (optionally) the corpus size."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build the index first (stage=index stage.embeddings_dir=<embeddings>), "
            "or finish an interrupted build"
        )
    manifest = json.loads(path.read_text())
    if "factory" not in manifest:
        raise IndexMismatchError(
            f"{path}: not a faiss index manifest (no field 'factory'): is it an embeddings folder? "
            "Pass it as stage.embeddings_dir"
        )
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexMismatchError(
            f"{path}: field 'format': unsupported index format {manifest.get('format')!r}"
        )
    if manifest.get("metric") != METRIC:
        raise IndexMismatchError(f"{path}: field 'metric': {manifest.get('metric')!r}, expected {METRIC!r}")
    for name, key in ((INDEX_FILE, "index_bytes"), (ROWS_FILE, "rows_bytes")):
        file = index_dir / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} listed in {path} is missing: rebuild the index (stage=index)")
        if file.stat().st_size != manifest[key]:
            raise IndexMismatchError(
                f"{file}: {file.stat().st_size} bytes, but {path} field '{key}' says {manifest[key]}: "
                "the folder mixes two builds; rebuild the index (stage=index)"
            )
    if corpus_size is not None and manifest["count"] != corpus_size:
        raise IndexMismatchError(
            f"{path}: field 'count': an index of {manifest['count']} passages, but the corpus has "
            f"{corpus_size}: build it from this corpus's embeddings"
        )
    return manifest


def check_index_source(manifest: dict[str, Any], emb_dir: str | Path, index_dir: str | Path) -> None:
    """Fail unless the index was built from the embeddings folder `emb_dir` as it is now."""
    recorded = manifest["source"]["manifest_sha256"]
    current = manifest_sha256(emb_dir)
    if recorded != current:
        raise IndexMismatchError(
            f"{Path(index_dir) / MANIFEST_FILE}: field 'source.manifest_sha256': the index was built from "
            f"other embeddings ({manifest['source']['embeddings_dir']}, manifest {recorded[:12]}) than "
            f"{Path(emb_dir) / 'manifest.json'} ({current[:12]}): rebuild it (stage=index) or drop one of "
            "stage.index_dir / stage.embeddings_dir"
        )


def source_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The index's source embeddings as `check_encoder_matches` reads an embeddings manifest."""
    return {**manifest["source"], "dim": manifest["dim"]}


class FaissIndex:
    """A built index folder, loaded for search; `search` returns corpus rows ordered by `(-score, row)`."""

    def __init__(
        self,
        index_dir: str | Path,
        *,
        mmap: bool = True,
        to_gpu: bool | str = "auto",
        device: int = 0,
        corpus_size: int | None = None,
    ) -> None:
        import faiss

        self.index_dir = Path(index_dir)
        self.manifest = read_index_manifest(self.index_dir, corpus_size)
        path = self.index_dir / INDEX_FILE
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            self.cpu_index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise IndexMismatchError(f"{path}: not a readable faiss index ({_faiss_message(e)})") from None
        self.rows = np.load(self.index_dir / ROWS_FILE, mmap_mode="r")
        if len(self.rows) != self.cpu_index.ntotal or self.cpu_index.d != self.manifest["dim"]:
            raise IndexMismatchError(
                f"{path}: {self.cpu_index.ntotal} vectors of dimension {self.cpu_index.d}, but "
                f"{self.index_dir / ROWS_FILE} has {len(self.rows)} rows and the manifest dimension "
                f"{self.manifest['dim']}: rebuild the index (stage=index)"
            )
        self.index = self.cpu_index
        self.on_gpu = False
        if to_gpu:
            self._to_gpu(device, required=to_gpu is True)
        self.params: dict[str, float] = {}

    def _to_gpu(self, device: int, required: bool) -> None:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
        if gpus == 0:
            if required:
                raise RuntimeError("stage.index_to_gpu=true, but faiss sees no GPU (faiss-gpu installed?)")
            return
        try:  # pragma: no cover - faiss-gpu only
            self._gpu_resources = faiss.StandardGpuResources()
            options = faiss.GpuClonerOptions()
            options.useFloat16 = True
            self.index = faiss.index_cpu_to_gpu(self._gpu_resources, device % gpus, self.cpu_index, options)
            self.on_gpu = True
            log.info("%s index on GPU %d", self.manifest["factory"], device % gpus)
        except RuntimeError as e:  # pragma: no cover - e.g. HNSW, which faiss-gpu does not have
            if required:
                raise
            log.warning(
                "%s stays on the CPU: faiss cannot move it to a GPU (%s)", self.manifest["factory"], e
            )

    def set_params(self, params: Mapping[str, float | int | None], key_prefix: str = "stage.") -> None:
        """Set search-time parameters (`nprobe`, `efSearch`, `quantizer_efSearch`, `k_factor`, ...);
        None values are skipped. A parameter the index does not have raises a `ValueError` naming it."""
        import faiss

        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        for name, value in params.items():
            if value is None:
                continue
            try:
                space.set_index_parameter(self.index, name, float(value))
            except RuntimeError:
                target = faiss.downcast_index(self.index)
                if not hasattr(target, name):  # IndexRefine's k_factor is a plain attribute
                    raise ValueError(
                        f"{key_prefix}{name}: the {self.manifest['factory']!r} index "
                        f"({self.index_dir}) has no search parameter {name!r}"
                    ) from None
                setattr(target, name, type(getattr(target, name))(value))
            self.params[name] = float(value)

    def search(
        self, queries: np.ndarray, top_k: int, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(scores [Q, k] float32, corpus rows [Q, k] int64)`, best first, padded with -inf / -1 where the
        index returns fewer than `top_k` results (e.g. a small `nprobe`). Tied scores are ordered by the
        lower row; a tie group at the k-th place is cut by row when it fits in `TIE_MARGIN` extra results."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest["dim"]:
            raise ValueError(
                f"query embeddings of shape {queries.shape}, the index has dimension {self.manifest['dim']}"
            )
        # a few extra results, so a tie group at the k-th place is cut by row, as exact search cuts it
        fetch = top_k + TIE_MARGIN if self.cpu_index.ntotal > top_k else top_k
        index = self.index if not self.on_gpu or fetch <= FAISS_GPU_MAX_K else self.cpu_index
        scores = np.empty((len(queries), top_k), dtype=np.float32)
        rows = np.empty((len(queries), top_k), dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            block = queries[start : start + batch_size]
            found_scores, ids = index.search(block, fetch)
            valid = ids >= 0
            found_rows = np.where(valid, np.asarray(self.rows)[np.where(valid, ids, 0)], -1)
            found_scores = np.where(valid, found_scores, -np.inf).astype(np.float32)
            # faiss orders tied scores arbitrarily: the exact path's order, by row
            scores[start : start + len(block)], rows[start : start + len(block)] = merge_topk(
                [(found_scores, found_rows)], top_k
            )
        return scores, rows
