"""`stage=rerank`: re-rank the top `depth` candidates of a run with a cross-encoder (SimLM's `src/inference/rerank_main.py`).

Each query's top `depth` candidates are ordered by the re-ranker's logit; the rest of the run stays
below them in its original order. Writes `<split>.trec` and `<split>.msmarco.txt` and returns the
metrics of the re-ranked run (and of the input run, as `<split>_input`) for splits with qrels.
Several devices: `torchrun --nproc_per_node=N run.py stage=rerank ...`; each rank scores a contiguous
slice of the pairs, rank 0 merges and writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run, rerank_candidates
from simlm.evaluation import evaluate
from simlm.models.hub import check_model_source
from simlm.retrieval.rerank import load_and_score, merge_reranked, scores_by_query
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import write_run_files
from simlm.stages.params import NON_EMPTY_TEXT, PATH, POSITIVE_INT, TAG

log = logging.getLogger(__name__)

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "model": NON_EMPTY_TEXT,
    "run_file": PATH,
    "split": NON_EMPTY_TEXT,
    "depth": POSITIVE_INT,
    "max_length": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "tag": TAG,
}


def run(cfg: DictConfig) -> Metrics:
    """Re-rank `stage.run_file` for `stage.split` with `stage.model`; write the runs, return the metrics.

    Every rank returns rank 0's metrics, so whichever rank writes `metrics.json` writes the same file.
    """
    if not cfg.stage.get("run_file"):
        raise ValueError("stage=rerank needs stage.run_file=<a TREC or MS MARCO run of stage.split>")
    runtime = Runtime.from_config(cfg)
    with runtime.process_group():
        return runtime.broadcast(_rerank(cfg, runtime))


def _rerank(cfg: DictConfig, runtime: Runtime) -> Metrics:
    stage = cfg.stage
    split, depth = str(stage.split), int(stage.depth)
    check_model_source(stage.model, "stage.model")  # before a large corpus is read
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
    scores, seconds = load_and_score(
        str(stage.model),
        data.corpus,
        [(queries[qid], doc_id) for qid, doc_id in candidates],
        runtime,
        max_length=int(stage.max_length),
        batch_size=int(stage.batch_size),
        quantize_mode=stage.get("quantize"),
    )
    if not runtime.is_main:
        return {}
    reranked = merge_reranked(run_in, scores_by_query(candidates, scores.tolist()), depth)
    write_run_files(Path(cfg.paths.output_dir), split, reranked, tag=str(stage.get("tag", "rerank")))
    metrics: Metrics = {}
    after = evaluate(reranked, data, split)
    if after is not None:
        metrics[split] = after
        metrics[f"{split}_input"] = evaluate(run_in, data, split) or {}
    metrics["rerank"] = {
        "pairs": len(candidates),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(candidates) / seconds, 1) if seconds > 0 else 0.0,
    }
    print(format_metrics(metrics, title=f"re-rank top {depth} of {stage.run_file} with {stage.model}"))
    return metrics
