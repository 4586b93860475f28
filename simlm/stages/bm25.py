"""`stage=bm25`: BM25 runs and metrics for the eval split, BM25 hard negatives for the train split."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.evaluation import evaluate
from simlm.retrieval.bm25 import BM25Retriever
from simlm.retrieval.mining import MiningConfig, mine, write_mined
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import report_splits, write_run_files
from simlm.stages.params import BOOL, MINING_PARAMS, POSITIVE_INT, integer, number, one_of

log = logging.getLogger(__name__)

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "top_k": POSITIVE_INT,
    "validation": BOOL,
    "bm25.k1": number(min=0),
    "bm25.b": number(min=0, max=1),
    "bm25.method": one_of("lucene", "robertson", "atire", "bm25l", "bm25+"),
    "bm25.n_threads": integer(min=-1),
    "negatives.enabled": BOOL,
    **{f"negatives.mining.{k}": c for k, c in MINING_PARAMS.items()},
}


def run(cfg: DictConfig) -> Metrics:
    """Index the corpus, retrieve top-k for the validation split and `data.eval_split`, and mine
    `train.jsonl` for `data.train_split` (without its held-out validation queries)."""
    stage = cfg.stage
    out_dir = Path(cfg.paths.output_dir)
    data = RetrievalData.from_config(cfg.data)
    retriever = BM25Retriever(**stage.bm25).index(data.corpus)

    metrics: Metrics = {}
    for split in report_splits(data, cfg.data.eval_split, validation=bool(stage.get("validation", True))):
        run_ = retriever.search(data.queries(split), top_k=stage.top_k)
        write_run_files(out_dir, split, run_, tag="bm25")
        scores = evaluate(run_, data, split)
        if scores is not None:
            metrics[split] = scores

    train_split = cfg.data.get("train_split")
    if stage.negatives.enabled and train_split and data.has_qrels(train_split):
        mining = MiningConfig(**stage.negatives.mining, seed=int(cfg.seed))
        queries = data.queries(train_split)
        train_run = retriever.search(queries, top_k=mining.depth)
        write_run_files(out_dir, train_split, train_run, tag="bm25")
        examples, stats = mine(train_run, queries, data.corpus, mining, qrels=data.qrels(train_split))
        write_mined(out_dir, train_split, examples, stats)
        log.info("BM25 negatives: %s", stats)
    print(format_metrics(metrics, title=f"BM25 on {cfg.data.name}"))
    return metrics
