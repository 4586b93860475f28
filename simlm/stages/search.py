"""`stage=search`: dense retrieval of the split(s)' queries (SimLM's `src/inference/search_main.py`).

What is searched, by the first that is set:
- `stage.index_dir`: a faiss index built by `stage=index` (approximate or exact, as its factory string
  says), read memory-mapped, with its search parameters (`nprobe`, `efSearch`, `index_params`);
- `stage.embeddings_dir`: the `stage=encode` shards, searched exactly block by block, memory-mapped
  (`stage.mmap`), so memory holds one shard whatever the corpus size;
- neither: the corpus encoded in memory first (small corpora, zero-shot checks).

Queries are encoded with `model`, which must be the model that encoded the passages: the dimension, the
passage-side settings and a probe passage's embedding are checked against the (index's source) manifest.
Several processes (torchrun, or `trainer.devices=N`) share the work (`stage.distribute`; see
`simlm.retrieval.parallel`) and give the same run as one. All splits are searched in one pass. Outputs
`<split>.trec` and `<split>.msmarco.txt` (rank 0), and metrics for splits with qrels (or answers).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.evaluation import evaluate
from simlm.launch import launch
from simlm.models.encoder import load_encoder
from simlm.models.hub import check_model_source
from simlm.models.quantize import quantize
from simlm.retrieval.ann import FaissIndex, check_index_source, source_manifest
from simlm.retrieval.index import ExactSearch, MemorySearch, to_run
from simlm.retrieval.parallel import encode_across_ranks, search_across_ranks
from simlm.retrieval.store import check_encoder_matches, read_manifest
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import write_run_files
from simlm.stages.params import (
    BOOL,
    PATH,
    POSITIVE_INT,
    SPLITS,
    TAG,
    Check,
    number,
    one_of,
    optional,
)

log = logging.getLogger(__name__)

INDEX_PARAMS = Check(
    "a mapping of faiss search parameter names to numbers (e.g. {quantizer_efSearch: 128, k_factor: 4})",
    lambda v: isinstance(v, dict) and all(isinstance(k, str) and number().ok(x) for k, x in v.items()),
)
# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "embeddings_dir": optional(PATH),
    "index_dir": optional(PATH),
    "split": SPLITS,
    "top_k": POSITIVE_INT,
    "backend": one_of("faiss", "torch"),
    "encode_batch_size": POSITIVE_INT,
    "query_batch_size": POSITIVE_INT,
    "mmap": BOOL,
    "block_rows": optional(POSITIVE_INT),
    "distribute": one_of("auto", "shards", "queries"),
    "nprobe": optional(POSITIVE_INT),
    "efSearch": optional(POSITIVE_INT),
    "index_params": optional(INDEX_PARAMS),
    "index_mmap": BOOL,
    "index_to_gpu": Check("'auto', true or false", lambda v: v == "auto" or isinstance(v, bool)),
    "strict_model_check": BOOL,
    "tag": TAG,
}


def run(cfg: DictConfig) -> Metrics:
    """Search `stage.split` over `stage.index_dir`, `stage.embeddings_dir` or the corpus encoded in
    memory; write run files and return the metrics (on `trainer.devices` processes: `simlm.launch`)."""
    return launch(_search_on_ranks, cfg)


def _search_on_ranks(cfg: DictConfig) -> Metrics:
    runtime = Runtime.from_config(cfg)
    if runtime.device.type == "cuda":  # pragma: no cover - exact search's GPU blocks go to this rank's GPU
        torch.cuda.set_device(runtime.device)
    with runtime.process_group():
        return runtime.broadcast(_search(cfg, runtime))


def _target(cfg: DictConfig, runtime: Runtime, data: RetrievalData, encoder: Any, tokenizer: Any) -> Any:
    """What to search (module docstring), checked against the corpus and the query encoder."""
    stage = cfg.stage
    corpus = data.corpus
    model_name = str(cfg.model.name_or_path)
    strict = bool(stage.get("strict_model_check", True))
    if stage.get("index_dir"):
        index = FaissIndex(
            stage.index_dir,
            mmap=bool(stage.get("index_mmap", True)),
            to_gpu=stage.get("index_to_gpu", "auto"),
            device=runtime.local_rank,
            corpus_size=len(corpus),
        )
        if stage.embeddings_dir:
            read_manifest(stage.embeddings_dir, corpus_size=len(corpus))
            check_index_source(index.manifest, stage.embeddings_dir, stage.index_dir)
        check_encoder_matches(source_manifest(index.manifest), encoder, tokenizer, model_name, strict=strict)
        params = {"nprobe": stage.get("nprobe"), "efSearch": stage.get("efSearch")}
        index.set_params({**params, **dict(stage.get("index_params") or {})})
        if index.manifest.get("ivf_lists") and stage.get("nprobe") is None:
            log.warning(
                "%s: stage.nprobe not set, faiss searches 1 list per query", index.manifest["factory"]
            )
        log.info("searching the %s index %s (%s)", index.manifest["factory"], stage.index_dir, index.params)
        return index
    if stage.embeddings_dir:
        manifest = read_manifest(stage.embeddings_dir, corpus_size=len(corpus))
        check_encoder_matches(manifest, encoder, tokenizer, model_name, strict=strict)
        return ExactSearch(
            Path(stage.embeddings_dir),
            backend=str(stage.backend),
            mmap=bool(stage.get("mmap", True)),
            block_rows=stage.get("block_rows"),
        )
    # no stage=encode output: the corpus encoded in memory (small corpora, zero-shot checks)
    embeddings = encode_across_ranks(
        encoder,
        tokenizer,
        runtime,
        titles=corpus.titles(),
        texts=corpus.texts(),
        batch_size=int(stage.encode_batch_size),
        precision=runtime.precision,
    )
    return MemorySearch([(np.arange(len(corpus), dtype=np.int64), embeddings)], backend=str(stage.backend))


def _search(cfg: DictConfig, runtime: Runtime) -> Metrics:
    stage = cfg.stage
    out_dir = Path(cfg.paths.output_dir)
    check_model_source(cfg.model.name_or_path)  # before a large corpus is read
    data = RetrievalData.from_config(cfg.data)
    corpus = data.corpus
    encoder, tokenizer = load_encoder(cfg.model)
    encoder = quantize(encoder.to(runtime.device), stage.get("quantize"))
    model_name = str(cfg.model.name_or_path)
    target = _target(cfg, runtime, data, encoder, tokenizer)

    splits = [stage.split] if isinstance(stage.split, str) else list(stage.split)
    qids: dict[str, list[str]] = {}
    texts: list[str] = []
    for split in splits:
        queries = data.queries(split)
        qids[split] = list(queries)
        texts += queries.values()
    started = time.perf_counter()
    query_emb = encode_across_ranks(
        encoder,
        tokenizer,
        runtime,
        queries=texts,
        batch_size=int(stage.encode_batch_size),
        precision=runtime.precision,
    )
    scores, rows = search_across_ranks(
        query_emb,
        target,
        int(stage.top_k),
        runtime,
        distribute=str(stage.get("distribute", "auto")),
        batch_size=int(stage.query_batch_size),
    )
    seconds = time.perf_counter() - started
    log.info(
        "%d queries encoded and searched over %d passages in %.1f s (%d process(es))",
        len(texts),
        len(corpus),
        seconds,
        runtime.world_size,
    )
    if not runtime.is_main:
        return {}

    metrics: Metrics = {}
    offset = 0
    for split in splits:
        n = len(qids[split])
        split_run = to_run(qids[split], scores[offset : offset + n], rows[offset : offset + n], corpus)
        offset += n
        write_run_files(out_dir, split, split_run, tag=str(stage.get("tag", "simlm")))
        split_metrics = evaluate(split_run, data, split)
        if split_metrics is not None:
            metrics[split] = split_metrics
    print(format_metrics(metrics, title=f"dense search on {cfg.data.name} with {model_name}"))
    return metrics
