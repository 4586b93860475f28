"""`stage=encode`: embed `data`'s corpus with `model` into resumable `.npy` shards (SimLM's `src/inference/encode_main.py`).

One process encodes on `trainer.accelerator`'s device (CUDA when available and allowed, else CPU).
For several devices launch one process per device with torchrun
(`torchrun --nproc_per_node=N run.py stage=encode ...`): each rank encodes a contiguous slice of the
corpus and rank 0 writes the manifest. Rerun with `stage.out_dir=<embeddings folder>` to resume an
interrupted run; finished shards are not recomputed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.models.encoder import load_encoder
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
    "progress": optional(BOOL),
}


def run(cfg: DictConfig) -> Metrics:
    """Encode the corpus into `stage.out_dir`; metrics: passages, seconds and passages/s of this run."""
    stage = cfg.stage
    runtime = Runtime.from_config(cfg)
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        log.warning(
            "trainer.devices=%d but stage=encode runs one process per device: launch it with "
            "torchrun --nproc_per_node=%d to use them all; encoding on %s only",
            devices,
            devices,
            runtime.device,
        )
    with runtime.process_group():
        # rank 0's folder for every rank (each torchrun process composes its own timestamped run dir)
        out_dir = Path(runtime.broadcast(str(stage.out_dir)))
        data = RetrievalData.from_config(cfg.data)
        corpus = data.corpus
        encoder, tokenizer = load_encoder(cfg.model)
        encoder.to(runtime.device)
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
    metrics: Metrics = {
        "encode": {
            "passages": len(corpus),
            "encoded": summary.encoded_passages,
            "skipped": len(summary.skipped_shards),
            "seconds": round(seconds, 3),
            "passages_per_s": round(summary.encoded_passages / seconds, 2) if seconds > 0 else 0.0,
        }
    }
    log.info("embeddings in %s (manifest: %s)", out_dir, summary.manifest)
    print(format_metrics(metrics, title=f"encode {cfg.data.name} with {cfg.model.name_or_path} -> {out_dir}"))
    return metrics
