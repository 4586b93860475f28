"""`stage=encode`: embed `data`'s corpus with `model` into resumable `.npy` shards (SimLM's `src/inference/encode_main.py`).

One process encodes on `trainer.accelerator`'s device (CUDA when available and allowed, else CPU).
Several: `trainer.devices=N` (N processes on this machine, `simlm.launch`) or torchrun
(`torchrun --nproc_per_node=N run.py stage=encode ...`, also across nodes): each rank encodes a
contiguous slice of the corpus into its own shards and rank 0 writes the manifest.

Resuming: with `stage.out_dir` left at its default (`<run dir>/embeddings`) the shards go to one stable
folder per model + data, `<stage.store_dir>/<data.name>/<model>-<key>` (`store_dir` defaults to
`${paths.cache_dir}/embeddings`), and `<run dir>/embeddings` is a link to it; so rerunning the same
command, in a new timestamped run dir, resumes where the last run stopped and skips every finished shard
(the log says how many). The key hashes what the vectors depend on: the corpus file (path, size,
modification time), the model (hub id, or the folder's files with sizes and times), the retrieval
settings in effect, dtype, shard size and world size; change any of them and a new folder is used. An
explicit `stage.out_dir=<folder>` (or `stage.store_dir=null`) writes there, as before, and resumes there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from simlm.data.dataset import RetrievalData
from simlm.launch import launch
from simlm.models.encoder import TextEncoder, load_encoder
from simlm.models.hub import check_model_source
from simlm.models.quantize import quantize
from simlm.retrieval.store import encode_corpus_to_shards
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.params import BOOL, PATH, POSITIVE_INT, one_of, optional

log = logging.getLogger(__name__)

# checked before the stage runs (simlm.stages.params), with trainer.devices
PARAMS = {
    "batch_size": POSITIVE_INT,
    "shard_size": POSITIVE_INT,
    "dtype": one_of("float16", "float32"),
    "out_dir": PATH,
    "store_dir": optional(PATH),
    "progress": optional(BOOL),
}
# conf/stage/encode.yaml's out_dir: left as is, the shards go to the stable store folder (module docstring)
DEFAULT_OUT_DIR = "${paths.output_dir}/embeddings"


def _file_stat(path: Path) -> list[Any]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _model_identity(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.is_dir():  # a hub id: its cached revision (snapshots/<commit>/config.json), if any
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        return {
            "hub_id": name_or_path,
            "revision": Path(cached).parent.name if isinstance(cached, str) else None,
        }
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {
        "folder": str(path.resolve()),
        "files": [[str(p.relative_to(path)), *_file_stat(p)] for p in files],
    }


def _slug(name: str) -> str:
    """A readable folder name: `org--model` of a hub id, a folder's name (with its parent's if it is
    a generic `model`/`exported`, e.g. `retriever2--model`)."""
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".", "..")]
    generic = parts[-1:] in (["model"], ["exported"])
    parts = parts[-2:] if generic or not Path(name).is_dir() else parts[-1:]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "--".join(parts) or "model")[:80]


def store_folder(
    store_dir: str | Path,
    data_name: str,
    corpus_path: Path,
    model_name: str,
    encoder: TextEncoder,
    *,
    dtype: str,
    shard_size: int,
    world_size: int,
    quantize_mode: str | None = None,
) -> Path:
    """The stable shard folder of this corpus + model + settings: `<store_dir>/<data>/<model>-<key>`."""
    identity = {
        "corpus": [str(corpus_path.resolve()), *_file_stat(corpus_path)],
        "model": _model_identity(model_name),
        "settings": asdict(encoder.settings),
        "dtype": dtype,
        "shard_size": shard_size,
        "world_size": world_size,
        **({"quantize": quantize_mode} if quantize_mode else {}),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return Path(store_dir) / _slug(data_name) / f"{_slug(model_name)}-{key}"


def _uses_default_out_dir(stage: DictConfig) -> bool:
    return OmegaConf.to_container(stage, resolve=False).get("out_dir") == DEFAULT_OUT_DIR


def _link(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target` (re-pointing an older link)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=True)


def _ranges(indices: list[int]) -> str:
    """`0-2, 5` for [0, 1, 2, 5]."""
    spans: list[list[int]] = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def run(cfg: DictConfig) -> Metrics:
    """Encode the corpus into `stage.out_dir`; metrics: passages, seconds and passages/s of this run
    (on `trainer.devices` processes, each encoding its slice: `simlm.launch`)."""
    return launch(_encode, cfg)


def _encode(cfg: DictConfig) -> Metrics:
    stage = cfg.stage
    runtime = Runtime.from_config(cfg)
    check_model_source(cfg.model.name_or_path)  # before a large corpus is read
    with runtime.process_group():
        data = RetrievalData.from_config(cfg.data)
        corpus = data.corpus
        encoder, tokenizer = load_encoder(cfg.model)
        encoder = quantize(encoder.to(runtime.device), stage.get("quantize"))
        link = Path(str(stage.out_dir))
        out_dir = link
        store_dir = stage.get("store_dir")
        # the run dir's folder is used in place if it is a real folder (an older run, resumed)
        if store_dir and _uses_default_out_dir(stage) and not (link.is_dir() and not link.is_symlink()):
            out_dir = store_folder(
                store_dir,
                str(cfg.data.name),
                data.corpus_path(),
                str(cfg.model.name_or_path),
                encoder,
                dtype=str(stage.dtype),
                shard_size=int(stage.shard_size),
                world_size=runtime.world_size,
                quantize_mode=stage.get("quantize"),
            )
        # rank 0's folders for every rank (each torchrun process composes its own timestamped run dir)
        out_dir, link = (Path(p) for p in runtime.broadcast((str(out_dir), str(link))))
        if out_dir != link:
            if runtime.is_main:
                out_dir.mkdir(parents=True, exist_ok=True)
                _link(link, out_dir)
            log.info(
                "stage.out_dir not set: shards in %s, the folder of this model + data (rerunning the same "
                "encode resumes there); %s links to it",
                out_dir,
                link,
            )
        started = time.perf_counter()
        summary = encode_corpus_to_shards(
            encoder,
            tokenizer,
            corpus,
            out_dir,
            shard_size=int(stage.shard_size),
            batch_size=int(stage.batch_size),
            dtype=str(stage.dtype),
            device=runtime.device,
            precision=runtime.precision,
            model_name=str(cfg.model.name_or_path),
            progress=stage.get("progress"),
        )
        seconds = time.perf_counter() - started
        # every rank's counts: the metrics and the resume line are about the whole run
        done = runtime.gather((summary.skipped_shards, len(summary.encoded_shards), summary.encoded_passages))
    if not runtime.is_main:
        return {}
    skipped = [indices for indices, _, _ in done]
    n_skipped = sum(len(indices) for indices in skipped)
    encoded_shards = sum(n for _, n, _ in done)
    encoded_passages = sum(p for _, _, p in done)
    if n_skipped:
        which = (
            _ranges(skipped[0])
            if len(done) == 1
            else "; ".join(f"rank {r}: {_ranges(indices)}" for r, indices in enumerate(skipped) if indices)
        )
        log.info(
            "resumed %s: %d of %d shards already encoded and reused (%s), %d encoded now (%d passages)",
            out_dir,
            n_skipped,
            n_skipped + encoded_shards,
            which,
            encoded_shards,
            encoded_passages,
        )
    metrics: Metrics = {
        "encode": {
            "passages": len(corpus),
            "encoded": encoded_passages,
            "skipped": n_skipped,
            "seconds": round(seconds, 3),
            "passages_per_s": round(encoded_passages / seconds, 2) if seconds > 0 else 0.0,
        }
    }
    log.info("embeddings in %s (manifest: %s)", out_dir, summary.manifest)
    print(format_metrics(metrics, title=f"encode {cfg.data.name} with {cfg.model.name_or_path} -> {out_dir}"))
    return metrics
