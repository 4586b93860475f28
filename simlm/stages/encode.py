"""`stage=encode`: embed `data`'s corpus with `model` into resumable `.npy` shards (SimLM spec 6.1).

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

import torch
from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.retrieval.encoding import encode_corpus_to_shards, load_encoder, resolve_device
from simlm.stages import Metrics, format_metrics

log = logging.getLogger(__name__)


def _setup_distributed(device_type: str) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True if this call created it."""
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def _shared_out_dir(out_dir: str) -> Path:
    """Rank 0's folder for every rank (each torchrun process composes its own timestamped run dir)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [out_dir]
        dist.broadcast_object_list(holder, src=0)
        out_dir = holder[0]
    return Path(out_dir)


def run(cfg: DictConfig) -> Metrics:
    """Encode the corpus into `stage.out_dir`; metrics: passages, seconds and passages/s of this run."""
    stage = cfg.stage
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.trainer.get("accelerator", "auto"), local_rank)
    created_group = _setup_distributed(device.type)
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        log.warning(
            "trainer.devices=%d but stage=encode runs one process per device: launch it with "
            "torchrun --nproc_per_node=%d to use them all; encoding on %s only",
            devices,
            devices,
            device,
        )
    try:
        out_dir = _shared_out_dir(str(stage.out_dir))
        data = RetrievalData.from_config(cfg.data)
        corpus = data.corpus
        encoder, tokenizer = load_encoder(cfg.model)
        encoder.to(device)
        fp16 = device.type == "cuda" and "16" in str(cfg.trainer.get("precision", "32"))
        started = time.perf_counter()
        summary = encode_corpus_to_shards(
            encoder,
            tokenizer,
            corpus,
            out_dir,
            shard_size=int(stage.shard_size),
            batch_size=int(stage.batch_size),
            dtype=str(stage.dtype),
            device=device,
            fp16=fp16,
            model_name=str(cfg.model.name_or_path),
            progress=stage.get("progress"),
        )
        seconds = time.perf_counter() - started
    finally:
        if created_group:
            torch.distributed.destroy_process_group()
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
