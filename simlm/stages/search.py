"""`stage=search`: dense retrieval of the split(s)' queries over stored passage embeddings (SimLM's `src/inference/search_main.py`).

Queries are encoded with `model`, which must be the model that encoded the passages: the dimension, the
passage-side settings and a probe passage's embedding are checked against the manifest. All splits are
searched in one pass over the shards. Outputs `<split>.trec` and `<split>.msmarco.txt`, and metrics for
splits with qrels (or answers for QA data).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.evaluation import evaluate
from simlm.models.encoder import load_encoder
from simlm.models.hub import check_model_source
from simlm.models.quantize import quantize
from simlm.retrieval.dense import encode_and_search, encode_passages
from simlm.retrieval.index import to_run
from simlm.retrieval.store import check_encoder_matches, load_shards, read_manifest
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import write_run_files
from simlm.stages.params import BOOL, PATH, POSITIVE_INT, SPLITS, TAG, one_of, optional

log = logging.getLogger(__name__)

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "embeddings_dir": optional(PATH),
    "split": SPLITS,
    "top_k": POSITIVE_INT,
    "backend": one_of("faiss", "torch"),
    "encode_batch_size": POSITIVE_INT,
    "query_batch_size": POSITIVE_INT,
    "strict_model_check": BOOL,
    "tag": TAG,
}


def run(cfg: DictConfig) -> Metrics:
    """Search `stage.split` over `stage.embeddings_dir`; write run files and return the metrics."""
    runtime = Runtime.from_config(cfg)
    if not runtime.is_main:
        log.info("stage=search runs on rank 0 only")
        return {}
    stage = cfg.stage
    out_dir = Path(cfg.paths.output_dir)
    check_model_source(cfg.model.name_or_path)  # before a large corpus is read
    data = RetrievalData.from_config(cfg.data)
    corpus = data.corpus
    encoder, tokenizer = load_encoder(cfg.model)
    encoder = quantize(encoder.to(runtime.device), stage.get("quantize"))
    model_name = str(cfg.model.name_or_path)
    if stage.embeddings_dir:
        emb_dir = Path(stage.embeddings_dir)
        manifest = read_manifest(emb_dir, corpus_size=len(corpus))
        check_encoder_matches(
            manifest, encoder, tokenizer, model_name, strict=bool(stage.get("strict_model_check", True))
        )
        shards = load_shards(emb_dir)
    else:  # no stage=encode output: encode the corpus in memory (small corpora, zero-shot checks)
        shards = encode_passages(
            encoder, tokenizer, corpus, batch_size=int(stage.encode_batch_size), precision=runtime.precision
        )

    splits = [stage.split] if isinstance(stage.split, str) else list(stage.split)
    qids: dict[str, list[str]] = {}
    texts: list[str] = []
    for split in splits:
        queries = data.queries(split)
        qids[split] = list(queries)
        texts += queries.values()
    started = time.perf_counter()
    scores, rows = encode_and_search(
        encoder,
        tokenizer,
        texts,
        shards,
        int(stage.top_k),
        batch_size=int(stage.encode_batch_size),
        precision=runtime.precision,
        backend=str(stage.backend),
        query_batch_size=int(stage.query_batch_size),
    )
    log.info(
        "%d queries encoded and searched over %d passages in %.1f s",
        len(texts),
        len(corpus),
        time.perf_counter() - started,
    )

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
