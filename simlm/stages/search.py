"""`stage=search`: dense retrieval of the split(s)' queries over stored passage embeddings (SimLM spec 6.2).

Queries are encoded with `model`, which must be the model that encoded the passages: the dimension, the
passage-side settings and a probe passage's embedding are checked against the manifest. All splits are
searched in one pass over the shards. Outputs `<split>.trec` and `<split>.msmarco.txt`, and metrics for
splits with qrels (or answers for QA data).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.retrieval.encoding import (
    check_encoder_matches,
    encode_texts,
    load_encoder,
    load_shards,
    read_manifest,
    resolve_device,
)
from simlm.retrieval.index import search, to_run
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import evaluate_split, write_run_files

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Metrics:
    """Search `stage.split` over `stage.embeddings_dir`; write run files and return the metrics."""
    if int(os.environ.get("RANK", "0")) != 0:
        log.info("stage=search runs on rank 0 only")
        return {}
    stage = cfg.stage
    out_dir = Path(cfg.paths.output_dir)
    data = RetrievalData.from_config(cfg.data)
    corpus = data.corpus
    device = resolve_device(cfg.trainer.get("accelerator", "auto"))
    encoder, tokenizer = load_encoder(cfg.model)
    encoder.to(device)
    model_name = str(cfg.model.name_or_path)
    if stage.embeddings_dir:
        emb_dir = Path(stage.embeddings_dir)
        manifest = read_manifest(emb_dir, corpus_size=len(corpus))
        check_encoder_matches(
            manifest, encoder, tokenizer, model_name, strict=bool(stage.get("strict_model_check", True))
        )
        shards = load_shards(emb_dir)
    else:  # no stage=encode output: encode the corpus in memory (small corpora, zero-shot checks)
        passages = encode_texts(
            encoder,
            tokenizer,
            titles=corpus.titles(),
            texts=corpus.texts(),
            batch_size=int(stage.encode_batch_size),
        )
        shards = [(np.arange(len(corpus), dtype=np.int64), passages)]

    splits = [stage.split] if isinstance(stage.split, str) else list(stage.split)
    qids: dict[str, list[str]] = {}
    texts: list[str] = []
    for split in splits:
        queries = data.queries(split)
        qids[split] = list(queries)
        texts += queries.values()
    fp16 = device.type == "cuda" and "16" in str(cfg.trainer.get("precision", "32"))
    started = time.perf_counter()
    query_emb = encode_texts(
        encoder, tokenizer, queries=texts, batch_size=int(stage.encode_batch_size), fp16=fp16
    )
    encoded = time.perf_counter()
    scores, rows = search(
        query_emb,
        shards,
        top_k=int(stage.top_k),
        backend=str(stage.backend),
        batch_size=int(stage.query_batch_size),
    )
    log.info(
        "%d queries encoded in %.1f s, searched over %d passages in %.1f s",
        len(texts),
        encoded - started,
        len(corpus),
        time.perf_counter() - encoded,
    )

    metrics: Metrics = {}
    offset = 0
    for split in splits:
        n = len(qids[split])
        split_run = to_run(qids[split], scores[offset : offset + n], rows[offset : offset + n], corpus)
        offset += n
        write_run_files(out_dir, split, split_run, tag=str(stage.get("tag", "simlm")))
        split_metrics = evaluate_split(data, split, split_run)
        if split_metrics is not None:
            metrics[split] = split_metrics
    print(format_metrics(metrics, title=f"dense search on {cfg.data.name} with {model_name}"))
    return metrics
