"""Dense encoding: in-memory (`encode_texts`) and resumable sharded corpus encoding to disk.

Both paths tokenise once without padding, encode in length-sorted batches (each batch padded with
`tokenizer.pad` to its own longest sequence), and put the vectors back in input order.

Corpus embeddings on disk (`encode_corpus_to_shards`)::

    emb_r{rank}_s{k}.npy     [n, dim] float16/float32 vectors of shard k of rank `rank`
    rows_r{rank}_s{k}.npy    [n] int64 corpus rows of those vectors
    encode_r{rank}.json      what rank `rank` is encoding (model, settings, dtype, shard size, ...)
    manifest.json            written by rank 0 once every shard of every rank exists

Multi-device encoding is plain torch, not Lightning: each process (`torchrun --nproc_per_node=N`, or
any initialised `torch.distributed` group) takes a contiguous 1/N slice of the corpus, as SimLM does,
and encodes it on its own device. Encoding has no gradients, optimiser or loop state for Lightning to
manage, and plain torch keeps it usable from a Lightning callback and on one CPU process alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simlm.models.encoder import (
    SETTINGS_FILE,
    RetrievalSettings,
    TextEncoder,
    load_tokenizer,
    tokenize_passages,
    tokenize_queries,
)
from simlm.progress import progress_bar

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DTYPES = ("float16", "float32")
# A fixed passage encoded with every corpus: search re-encodes it to check it uses the same model.
PROBE_TITLE = "SimLM embedding probe"
PROBE_TEXT = "A fixed passage encoded next to every corpus, so that a later search can check its encoder."
# Settings that shape query and passage vectors alike: a mismatch makes the scores meaningless.
_VECTOR_SETTINGS = ("pooling", "l2_normalize", "add_pooler", "pooler_dim", "share_encoder")
_MODEL_SETTING_KEYS = (
    "pooling",
    "l2_normalize",
    "q_max_len",
    "p_max_len",
    "query_prefix",
    "passage_prefix",
    "passage_format",
)


class EmbeddingMismatchError(ValueError):
    """Stored embeddings do not belong to this corpus, model or configuration."""


# --------------------------------------------------------------------------- loading
def load_encoder(model_cfg: Any) -> tuple[TextEncoder, Any]:
    """`(TextEncoder, tokenizer)` of the `model` config group (`name_or_path` is a hub id or a folder).

    Precedence: a folder saved by this project carries `simlm_retrieval.json`, and its settings win
    (they are how the model was trained); the group's `pooling`, `l2_normalize`, max lengths and prefixes
    are used only for folders/hub ids without that file. Differences are logged. Set
    `+model.override_saved_settings=true` to make the config win instead.
    """
    import transformers

    transformers.logging.set_verbosity_error()  # the LOAD REPORT of ignored BERT pooler weights is noise
    name = str(model_cfg["name_or_path"])
    config_values = {
        k: model_cfg[k] for k in _MODEL_SETTING_KEYS if k in model_cfg and model_cfg[k] is not None
    }
    settings_file = Path(name) / SETTINGS_FILE
    override = bool(model_cfg.get("override_saved_settings", False))
    if settings_file.is_file() and not override:
        saved = json.loads(settings_file.read_text())
        differing = {k: (saved[k], v) for k, v in config_values.items() if k in saved and saved[k] != v}
        if differing:
            log.warning(
                "%s: using its saved settings over the model config for %s (saved, config); "
                "+model.override_saved_settings=true makes the config win",
                settings_file,
                differing,
            )
        encoder = TextEncoder.from_pretrained(name)
    else:
        encoder = TextEncoder.from_pretrained(name, **config_values)
    return encoder, load_tokenizer(name)


def embedding_dim(encoder: TextEncoder) -> int:
    """Size of the vectors `encoder` produces."""
    if encoder.pooler is not None:
        return int(encoder.pooler.out_features)
    return int(encoder.query_model.config.hidden_size)


def resolve_device(accelerator: str | None = "auto", local_rank: int = 0) -> torch.device:
    """`cuda:<local_rank>` if CUDA is available and `accelerator` allows it (auto/gpu/cuda), else CPU."""
    if str(accelerator or "auto").lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def dist_rank_world() -> tuple[int, int]:
    """`(rank, world_size)` of the initialised torch.distributed group, else `(0, 1)`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- in-memory encoding
def _tokenize(
    tokenizer: Any,
    settings: RetrievalSettings,
    queries: Sequence[str] | None,
    titles: Sequence[str] | None,
    texts: Sequence[str] | None,
) -> tuple[dict[str, list[list[int]]], bool]:
    if queries is not None:
        if texts is not None or titles is not None:
            raise ValueError("pass either queries or titles/texts, not both")
        if not queries:  # tokenizers reject an empty batch
            return {"input_ids": []}, True
        enc = tokenize_queries(tokenizer, list(queries), settings, pad=False)
        is_query = True
    else:
        if texts is None:
            raise ValueError("pass queries, or texts (with optional titles) for passages")
        titles = [""] * len(texts) if titles is None else list(titles)
        if len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
        if not texts:
            return {"input_ids": []}, False
        enc = tokenize_passages(tokenizer, titles, list(texts), settings, pad=False)
        is_query = False
    return {k: list(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}, is_query


def _encode_features(
    encoder: TextEncoder,
    tokenizer: Any,
    features: dict[str, list[list[int]]],
    *,
    is_query: bool,
    batch_size: int,
    device: torch.device,
    fp16: bool,
    progress: bool | None,
) -> np.ndarray:
    """Encode unpadded features longest-first (little padding) and return float32 rows in input order."""
    n = len(features["input_ids"])
    out = np.empty((n, embedding_dim(encoder)), dtype=np.float32)
    if n == 0:
        return out
    lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")
    pad_multiple = 8 if device.type == "cuda" else None  # tensor-core friendly shapes, as SimLM
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if fp16 and device.type == "cuda"
        else contextlib.nullcontext()
    )
    starts = progress_bar(
        range(0, n, batch_size), "encode queries" if is_query else "encode passages", progress
    )
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode(), autocast:
            for start in starts:
                idx = order[start : start + batch_size]
                batch = tokenizer.pad(
                    {k: [v[i] for i in idx] for k, v in features.items()},
                    return_tensors="pt",
                    pad_to_multiple_of=pad_multiple,
                )
                batch = {k: t.to(device, non_blocking=True) for k, t in batch.items()}
                out[idx] = encoder.encode(batch, is_query=is_query).float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out


def _encoder_device(encoder: TextEncoder) -> torch.device:
    return next(encoder.parameters()).device


def encode_texts(
    encoder: TextEncoder,
    tokenizer: Any,
    *,
    queries: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    fp16: bool = False,
    progress: bool | None = None,
) -> np.ndarray:
    """Embeddings `[n, dim]` float32 of `queries`, or of passages (`texts` with optional `titles`).

    Runs in eval mode under `torch.inference_mode` (the previous train/eval mode is restored, so a
    training callback can call it), in length-sorted batches; rows come back in input order.
    `device=None` keeps the encoder where it is; otherwise the encoder is moved to `device`.
    `fp16` enables float16 autocast on CUDA (ignored on CPU, where it is slower).
    """
    if device is None:
        device = _encoder_device(encoder)
    else:
        device = torch.device(device)
        encoder.to(device)
    features, is_query = _tokenize(tokenizer, encoder.settings, queries, titles, texts)
    return _encode_features(
        encoder,
        tokenizer,
        features,
        is_query=is_query,
        batch_size=batch_size,
        device=device,
        fp16=fp16,
        progress=progress,
    )


def probe_embedding(
    encoder: TextEncoder, tokenizer: Any, device: str | torch.device | None = None
) -> np.ndarray:
    """The vector of the fixed probe passage (stored in the manifest to recognise the model later)."""
    return encode_texts(encoder, tokenizer, titles=[PROBE_TITLE], texts=[PROBE_TEXT], device=device)[0]


# --------------------------------------------------------------------------- sharded corpus encoding
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


def rank_slice(corpus_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous `[start, end)` rows of `rank` (slice sizes differ by at most one)."""
    return corpus_size * rank // world_size, corpus_size * (rank + 1) // world_size


def plan_shards(corpus_size: int, shard_size: int, rank: int, world_size: int) -> list[ShardSpec]:
    """The shards of one rank: its contiguous slice cut into pieces of `shard_size` rows."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    start, end = rank_slice(corpus_size, rank, world_size)
    return [
        ShardSpec(rank, k, s, min(end, s + shard_size)) for k, s in enumerate(range(start, end, shard_size))
    ]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    fp16: bool = False,
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
    dist_rank, dist_world = dist_rank_world()
    rank = dist_rank if rank is None else rank
    world_size = dist_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if device is None:
        device = _encoder_device(encoder)
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
    _write_json_atomic(state_path, run_config)

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
        features, _ = _tokenize(tokenizer, encoder.settings, None, titles, texts)
        del titles, texts
        emb = _encode_features(
            encoder,
            tokenizer,
            features,
            is_query=False,
            batch_size=batch_size,
            device=device,
            fp16=fp16,
            progress=progress,
        )
        _save_npy_atomic(out_dir / spec.rows_file, rows)
        _save_npy_atomic(out_dir / spec.emb_file, emb.astype(dtype, copy=False))
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
        torch.distributed.barrier()
    if rank == 0:
        summary.manifest = finalize_manifest(out_dir, run_config)
    if distributed:
        torch.distributed.barrier()
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
    _write_json_atomic(path, manifest)
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


def load_shards(emb_dir: str | Path, mmap: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `(rows int64 [n], embeddings [n, dim])` per shard, in manifest order, one shard at a time."""
    emb_dir = Path(emb_dir)
    manifest = read_manifest(emb_dir)
    mode = "r" if mmap else None
    for s in manifest["shards"]:
        rows = np.load(emb_dir / s["rows"], mmap_mode=mode)
        emb = np.load(emb_dir / s["emb"], mmap_mode=mode)
        if emb.shape != (len(rows), manifest["dim"]):
            raise EmbeddingMismatchError(
                f"{emb_dir / s['emb']}: shape {emb.shape}, expected ({len(rows)}, {manifest['dim']})"
            )
        yield rows, emb


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
