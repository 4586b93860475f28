"""The embedding shard store: an encoded corpus on disk, resumable, checked against the model that reads it.

    emb_r{rank}_s{k}.npy     [n, dim] float16/float32 vectors of shard k of rank `rank`
    rows_r{rank}_s{k}.npy    [n] int64 corpus rows of those vectors
    encode_r{rank}.json      what rank `rank` is encoding (model, settings, dtype, shard size, probe, ...)
    manifest.json            written by rank 0 once every shard of every rank exists

Multi-device encoding is plain torch, not Lightning: each process (`torchrun --nproc_per_node=N`, or
any initialised `torch.distributed` group) takes a contiguous 1/N slice of the corpus, as SimLM does,
and encodes it on its own device. Encoding has no gradients, optimiser or loop state for Lightning to
manage, and plain torch keeps it usable from a Lightning callback and on one CPU process alike.
Every file is written atomically (`simlm.data.io`), so a finished shard is never recomputed and a
half-written one never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simlm.data.io import atomic_write, write_json
from simlm.models.encoder import TextEncoder, embedding_dim
from simlm.retrieval.encoding import encode_features, encode_texts, encoder_device, tokenize_texts
from simlm.runtime import Runtime, rank_slice

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DTYPES = ("float16", "float32")
# A fixed passage encoded with every corpus: search re-encodes it to check it uses the same model.
PROBE_TITLE = "SimLM embedding probe"
PROBE_TEXT = "A fixed passage encoded next to every corpus, so that a later search can check its encoder."
# Settings that shape query and passage vectors alike: a mismatch makes the scores meaningless.
_VECTOR_SETTINGS = ("pooling", "l2_normalize", "add_pooler", "pooler_dim", "share_encoder")


class EmbeddingMismatchError(ValueError):
    """Stored embeddings do not belong to this corpus, model or configuration."""


def probe_embedding(
    encoder: TextEncoder, tokenizer: Any, device: str | torch.device | None = None
) -> np.ndarray:
    """The vector of the fixed probe passage (stored in the manifest to recognise the model later)."""
    return encode_texts(encoder, tokenizer, titles=[PROBE_TITLE], texts=[PROBE_TEXT], device=device)[0]


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of rank `rank`: corpus rows `start` (inclusive) to `end` (exclusive)."""

    rank: int
    index: int
    start: int
    end: int

    @property
    def emb_file(self) -> str:
        return f"emb_r{self.rank}_s{self.index}.npy"

    @property
    def rows_file(self) -> str:
        return f"rows_r{self.rank}_s{self.index}.npy"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "emb": self.emb_file, "rows": self.rows_file}


def plan_shards(corpus_size: int, shard_size: int, rank: int, world_size: int) -> list[ShardSpec]:
    """The shards of one rank: its contiguous slice cut into pieces of `shard_size` rows."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    start, end = rank_slice(corpus_size, rank, world_size)
    return [
        ShardSpec(rank, k, s, min(end, s + shard_size)) for k, s in enumerate(range(start, end, shard_size))
    ]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def shard_complete(out_dir: Path, spec: ShardSpec, dim: int | None = None, dtype: str | None = None) -> bool:
    """Whether both files of `spec` exist with the expected shapes (the embedding file is written last)."""
    emb_path, rows_path = out_dir / spec.emb_file, out_dir / spec.rows_file
    if not (emb_path.is_file() and rows_path.is_file()):
        return False
    try:
        rows = np.load(rows_path, mmap_mode="r")
        emb = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    n = spec.end - spec.start
    if rows.shape != (n,) or emb.ndim != 2 or emb.shape[0] != n:
        return False
    if n and (int(rows[0]) != spec.start or int(rows[-1]) != spec.end - 1):
        return False
    if dim is not None and emb.shape[1] != dim:
        return False
    return dtype is None or emb.dtype == np.dtype(dtype)


@dataclass
class EncodeSummary:
    """What one call of `encode_corpus_to_shards` did on this rank."""

    rank: int
    world_size: int
    encoded_passages: int = 0
    encoded_shards: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)
    manifest: Path | None = None


def _run_config(
    encoder: TextEncoder,
    model_name: str | None,
    dtype: str,
    dim: int,
    corpus_size: int,
    shard_size: int,
    world_size: int,
    probe: np.ndarray,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "model": model_name,
        "settings": asdict(encoder.settings),
        "dtype": dtype,
        "dim": dim,
        "corpus_size": corpus_size,
        "shard_size": shard_size,
        "world_size": world_size,
        "probe": [float(x) for x in probe],
    }


def _check_resumable(path: Path, current: dict[str, Any]) -> None:
    """Refuse to mix shards of a different model or layout into the same folder."""
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    keys = ("format", "settings", "dtype", "dim", "corpus_size", "shard_size", "world_size")
    differing = [k for k in keys if previous.get(k) != current[k]]
    if not differing and not np.allclose(previous.get("probe", []), current["probe"], atol=1e-3):
        differing.append("model weights (probe embedding)")
    if differing:
        raise EmbeddingMismatchError(
            f"{path.parent} holds embeddings of another encode run (differs in {', '.join(differing)}); "
            "delete the folder or choose another stage.out_dir"
        )


def encode_corpus_to_shards(
    encoder: TextEncoder,
    tokenizer: Any,
    corpus: Any,
    out_dir: str | Path,
    *,
    shard_size: int = 50_000,
    batch_size: int = 128,
    dtype: str = "float16",
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    model_name: str | None = None,
    progress: bool | None = None,
) -> EncodeSummary:
    """Encode this rank's contiguous slice of `corpus` into `.npy` shards under `out_dir`; resumable.

    A shard whose files are complete is skipped, so rerunning after an interruption only encodes the
    missing shards (the folder must hold the same model/settings/layout, else `EmbeddingMismatchError`).
    Each shard is tokenised, encoded length-sorted, and written atomically (rows, then embeddings:
    the embedding file marks the shard as complete); memory is bounded by `shard_size`.
    `rank`/`world_size` default to the torch.distributed group (or 0/1). Rank 0 writes `manifest.json`
    once all shards of all ranks exist (after a barrier when distributed).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    runtime = Runtime(encoder_device(encoder) if device is None else torch.device(device))
    dist_world = runtime.world_size
    rank = runtime.rank if rank is None else rank
    world_size = dist_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if device is None:
        device = runtime.device
    else:
        device = torch.device(device)
        encoder.to(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dim = embedding_dim(encoder)
    corpus_size = len(corpus)

    run_config = _run_config(
        encoder,
        model_name,
        dtype,
        dim,
        corpus_size,
        shard_size,
        world_size,
        probe_embedding(encoder, tokenizer, device),
    )
    state_path = out_dir / f"encode_r{rank}.json"
    _check_resumable(state_path, run_config)
    write_json(state_path, run_config)

    summary = EncodeSummary(rank, world_size)
    for spec in plan_shards(corpus_size, shard_size, rank, world_size):
        if shard_complete(out_dir, spec, dim, dtype):
            summary.skipped_shards.append(spec.index)
            log.info("rank %d: shard %d (rows %d-%d) already encoded", rank, spec.index, spec.start, spec.end)
            continue
        started = time.perf_counter()
        rows = np.arange(spec.start, spec.end, dtype=np.int64)
        titles = corpus.titles(rows.tolist())
        texts = corpus.texts(rows.tolist())
        features, _ = tokenize_texts(tokenizer, encoder.settings, None, titles, texts)
        del titles, texts
        emb = encode_features(
            encoder,
            tokenizer,
            features,
            is_query=False,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=progress,
        )
        _save_npy(out_dir / spec.rows_file, rows)
        _save_npy(out_dir / spec.emb_file, emb.astype(dtype, copy=False))
        summary.encoded_shards.append(spec.index)
        summary.encoded_passages += len(rows)
        log.info(
            "rank %d: shard %d (%d passages) encoded in %.1f s",
            rank,
            spec.index,
            len(rows),
            time.perf_counter() - started,
        )

    distributed = dist_world > 1 and world_size == dist_world
    if distributed:
        runtime.barrier()
    if rank == 0:
        summary.manifest = finalize_manifest(out_dir, run_config)
    if distributed:
        runtime.barrier()
    return summary


def finalize_manifest(out_dir: str | Path, run_config: dict[str, Any]) -> Path | None:
    """Write `manifest.json` if every shard of every rank is complete; else return None."""
    out_dir = Path(out_dir)
    corpus_size, world_size = run_config["corpus_size"], run_config["world_size"]
    specs = [
        spec
        for r in range(world_size)
        for spec in plan_shards(corpus_size, run_config["shard_size"], r, world_size)
    ]
    missing = [s for s in specs if not shard_complete(out_dir, s, run_config["dim"], run_config["dtype"])]
    if missing:
        log.info("%d shard(s) of other ranks missing in %s: manifest not written yet", len(missing), out_dir)
        return None
    manifest = {
        **run_config,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "shards": [s.to_json() for s in specs],
    }
    path = out_dir / MANIFEST_FILE
    write_json(path, manifest)
    return path


def read_manifest(emb_dir: str | Path, corpus_size: int | None = None) -> dict[str, Any]:
    """The manifest of an embeddings folder, checked for completeness and (optionally) the corpus size."""
    emb_dir = Path(emb_dir)
    path = emb_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: encode the corpus first (stage=encode), or finish an interrupted encode run"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise EmbeddingMismatchError(f"{path}: unsupported manifest format {manifest.get('format')!r}")
    if corpus_size is not None and manifest["corpus_size"] != corpus_size:
        raise EmbeddingMismatchError(
            f"{path}: embeddings of a {manifest['corpus_size']}-passage corpus, but the corpus has "
            f"{corpus_size} passages"
        )
    covered = sum(s["end"] - s["start"] for s in manifest["shards"])
    if covered != manifest["corpus_size"]:
        raise EmbeddingMismatchError(f"{path}: shards cover {covered} of {manifest['corpus_size']} rows")
    for s in manifest["shards"]:
        for key in ("emb", "rows"):
            if not (emb_dir / s[key]).is_file():
                raise FileNotFoundError(f"{emb_dir / s[key]} listed in {path} is missing")
    return manifest


def manifest_sha256(emb_dir: str | Path) -> str:
    """The sha256 of an embeddings folder's `manifest.json`: what an index built from it records."""
    return hashlib.sha256((Path(emb_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Block:
    """Rows `start` to `end` (local offsets) of shard `shard` (its position in the manifest)."""

    shard: int
    start: int
    end: int


def plan_blocks(manifest: dict[str, Any], block_rows: int | None = None) -> list[Block]:
    """The manifest's shards cut into blocks of at most `block_rows` rows (None: whole shards).

    The plan depends on the manifest alone, so every process of a run cuts the same blocks.
    """
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    blocks = []
    for i, s in enumerate(manifest["shards"]):
        n = s["end"] - s["start"]
        step = block_rows or max(n, 1)
        blocks += [Block(i, a, min(n, a + step)) for a in range(0, n, step)]
    return blocks


def _open_shard(
    emb_dir: Path, manifest: dict[str, Any], shard: int, mmap: bool
) -> tuple[np.ndarray, np.ndarray]:
    s = manifest["shards"][shard]
    mode = "r" if mmap else None
    rows = np.load(emb_dir / s["rows"], mmap_mode=mode)
    emb = np.load(emb_dir / s["emb"], mmap_mode=mode)
    if emb.shape != (len(rows), manifest["dim"]):
        raise EmbeddingMismatchError(
            f"{emb_dir / s['emb']}: shape {emb.shape}, expected ({len(rows)}, {manifest['dim']})"
        )
    return rows, emb


def iter_blocks(
    emb_dir: str | Path,
    blocks: Sequence[Block] | None = None,
    *,
    block_rows: int | None = None,
    mmap: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `(rows int64 [n], embeddings [n, dim])` per block (default: `plan_blocks(manifest, block_rows)`).

    With `mmap` (the default) each shard is memory-mapped (`np.load(mmap_mode="r")`) and dropped when
    its last block is done, so memory holds the pages of one shard whatever the corpus size; without
    it each shard is read whole, one at a time.
    """
    emb_dir = Path(emb_dir)
    manifest = read_manifest(emb_dir)
    if blocks is None:
        blocks = plan_blocks(manifest, block_rows)
    current, arrays = -1, None
    for block in blocks:
        if block.shard != current:
            arrays = None  # unmap the previous shard before mapping the next
            current, arrays = block.shard, _open_shard(emb_dir, manifest, block.shard, mmap)
        yield arrays[0][block.start : block.end], arrays[1][block.start : block.end]


def load_shards(emb_dir: str | Path, mmap: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `(rows int64 [n], embeddings [n, dim])` per shard, in manifest order, one shard at a time
    (memory-mapped by default: see `iter_blocks`)."""
    return iter_blocks(emb_dir, mmap=mmap)


def write_embeddings(
    out_dir: str | Path,
    vectors: np.ndarray | Callable[[int, int], np.ndarray],
    corpus_size: int,
    *,
    shard_size: int = 50_000,
    dtype: str = "float16",
    model: str | None = None,
) -> Path:
    """An embeddings folder (shards + manifest) of vectors computed elsewhere; returns the manifest path.

    `vectors` is an `[corpus_size, dim]` array (a memmap is fine) or a function `(start, end) -> rows`
    called once per shard, so a corpus larger than memory is written shard by shard. Row `i` is corpus
    row `i`. Without an encoder the manifest has no settings or probe: `check_encoder_matches` then
    checks the dimension only.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    take = vectors if callable(vectors) else (lambda a, b: vectors[a:b])
    dim = None
    for spec in plan_shards(corpus_size, shard_size, 0, 1):
        emb = np.asarray(take(spec.start, spec.end))
        if (
            emb.ndim != 2
            or emb.shape[0] != spec.end - spec.start
            or (dim is not None and emb.shape[1] != dim)
        ):
            raise ValueError(f"rows {spec.start}-{spec.end}: got an array of shape {emb.shape}")
        dim = emb.shape[1]
        _save_npy(out_dir / spec.rows_file, np.arange(spec.start, spec.end, dtype=np.int64))
        _save_npy(out_dir / spec.emb_file, emb.astype(dtype, copy=False))
    run_config = {
        "format": MANIFEST_FORMAT,
        "model": model,
        "settings": {},
        "dtype": dtype,
        "dim": dim if dim is not None else 0,
        "corpus_size": corpus_size,
        "shard_size": shard_size,
        "world_size": 1,
        "probe": [],
    }
    path = finalize_manifest(out_dir, run_config)
    assert path is not None  # every shard was just written
    return path


def check_encoder_matches(
    manifest: dict[str, Any],
    encoder: TextEncoder,
    tokenizer: Any,
    model_name: str | None = None,
    *,
    strict: bool = True,
    device: str | torch.device | None = None,
) -> None:
    """Fail clearly unless `encoder` is the model that produced the stored passage embeddings.

    Checked: the dimension; the settings that shape every vector (pooling, normalisation, pooler; other
    differences, such as max lengths or prefixes, only warn); and the embedding of the probe passage,
    which must reach cosine ≥ 0.999 (fp16 autocast passes, another checkpoint fails). With
    `strict=False` the last two checks only warn.
    """
    stored = f"{manifest.get('model')!r}"
    dim = embedding_dim(encoder)
    if dim != manifest["dim"]:
        raise EmbeddingMismatchError(
            f"the passage embeddings have dimension {manifest['dim']} (model {stored}) but the query "
            f"encoder {model_name!r} produces {dim}: search with the model that encoded the corpus"
        )
    problems = []
    current = asdict(encoder.settings)
    saved = manifest.get("settings", {})
    differing = {k: (saved.get(k), v) for k, v in current.items() if k in saved and saved[k] != v}
    if any(k in _VECTOR_SETTINGS for k in differing):
        problems.append(f"settings differ (stored, current): {differing}")
    elif differing:  # max lengths and prefixes: legitimate to change, but likely a slip
        log.warning("settings differ from those of the encoded corpus (stored, current): %s", differing)
    probe = np.asarray(manifest.get("probe", []), dtype=np.float32)
    if probe.shape == (dim,):
        now = probe_embedding(encoder, tokenizer, device)
        cosine = float(probe @ now / max(np.linalg.norm(probe) * np.linalg.norm(now), 1e-12))
        if cosine < 0.999:
            problems.append(f"the probe passage embeds differently (cosine {cosine:.4f}): other weights")
    if problems:
        message = (
            f"the query encoder {model_name!r} is not the model that encoded the passages ({stored}): "
            + "; ".join(problems)
        )
        if strict:
            raise EmbeddingMismatchError(message)
        log.warning("%s", message)
    elif model_name is not None and manifest.get("model") not in (None, model_name):
        log.info("model path %s differs from the manifest's %s, but the encoders agree", model_name, stored)
