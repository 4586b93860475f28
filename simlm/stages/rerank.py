"""`stage=rerank`: re-rank the top `depth` candidates of a run with a cross-encoder (SimLM spec 3.4).

Each query's top `depth` candidates are ordered by the re-ranker's logit; the rest of the run stays
below them in its original order. Writes `<split>.trec` and `<split>.msmarco.txt` and returns the
metrics of the re-ranked run (and of the input run, as `<split>_input`) for splits with qrels.
Several devices: `torchrun --nproc_per_node=N run.py stage=rerank ...`; each rank scores a contiguous
slice of the pairs, rank 0 merges and writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run
from simlm.retrieval.encoding import dist_rank_world, resolve_device
from simlm.retrieval.rerank import load_reranker, merge_reranked, rerank_candidates, score_pairs_distributed
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import evaluate_split, write_run_files
from simlm.stages.encode import _setup_distributed

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Metrics:
    """Re-rank `stage.run_file` for `stage.split` with `stage.model`; write the runs, return the metrics."""
    if not cfg.stage.get("run_file"):
        raise ValueError("stage=rerank needs stage.run_file=<a TREC or MS MARCO run of stage.split>")
    return run_on_ranks(cfg, _rerank)


def run_on_ranks(cfg: DictConfig, work: Callable[[DictConfig, torch.device], Metrics]) -> Metrics:
    """Run `work(cfg, device)` on this process's device, joining torchrun's process group if there is one.

    Every rank returns rank 0's metrics, so whichever rank writes `metrics.json` writes the same file.
    """
    device = resolve_device(cfg.trainer.get("accelerator", "auto"), int(os.environ.get("LOCAL_RANK", "0")))
    created_group = _setup_distributed(device.type)
    try:
        metrics = work(cfg, device)
        if created_group:
            holder = [metrics]
            torch.distributed.broadcast_object_list(holder, src=0)
            metrics = holder[0]
    finally:
        if created_group:
            torch.distributed.destroy_process_group()
    return metrics


def _rerank(cfg: DictConfig, device: torch.device) -> Metrics:
    stage = cfg.stage
    split, depth = str(stage.split), int(stage.depth)
    data = RetrievalData.from_config(cfg.data)
    queries = data.queries(split)
    run_in = read_run(stage.run_file)
    unknown = [q for q in run_in if q not in queries]
    if unknown:
        raise ValueError(
            f"{stage.run_file} ranks {len(unknown)} queries that split '{split}' does not have "
            f"(e.g. {unknown[0]!r}): pass the run of stage.split"
        )
    candidates = rerank_candidates(run_in, depth)
    model, tokenizer = load_reranker(str(stage.model))
    model.to(device)
    fp16 = device.type == "cuda" and "16" in str(cfg.trainer.get("precision", "32"))
    started = time.perf_counter()
    scores = score_pairs_distributed(
        model,
        tokenizer,
        data.corpus,
        [(queries[qid], doc_id) for qid, doc_id in candidates],
        max_length=int(stage.max_length),
        batch_size=int(stage.batch_size),
        fp16=fp16,
    )
    seconds = time.perf_counter() - started
    log.info(
        "%d pairs scored in %.1f s (%.0f pairs/s)",
        len(candidates),
        seconds,
        len(candidates) / max(seconds, 1e-9),
    )
    if dist_rank_world()[0] != 0:
        return {}
    by_query: dict[str, dict[str, float]] = {}
    for (qid, doc_id), score in zip(candidates, scores.tolist()):
        by_query.setdefault(qid, {})[doc_id] = score
    reranked = merge_reranked(run_in, by_query, depth)
    write_run_files(Path(cfg.paths.output_dir), split, reranked, tag=str(stage.get("tag", "rerank")))
    metrics: Metrics = {}
    after = evaluate_split(data, split, reranked)
    if after is not None:
        metrics[split] = after
        metrics[f"{split}_input"] = evaluate_split(data, split, run_in) or {}
    metrics["rerank"] = {
        "pairs": len(candidates),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(candidates) / seconds, 1) if seconds > 0 else 0.0,
    }
    print(format_metrics(metrics, title=f"re-rank top {depth} of {stage.run_file} with {stage.model}"))
    return metrics
