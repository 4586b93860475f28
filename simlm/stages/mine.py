"""`stage=mine`: a run + judgements -> SimLM training examples with mined hard negatives (SimLM's `misc/prepare_msmarco_data.py`; QA answers as DPR)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run
from simlm.retrieval.mining import MiningConfig, mine, write_mined
from simlm.stages.params import MINING_PARAMS, NON_EMPTY_TEXT, PATH, optional

log = logging.getLogger(__name__)

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "run_file": PATH,
    "split": optional(NON_EMPTY_TEXT),
    **{f"mining.{k}": c for k, c in MINING_PARAMS.items()},
}


def run(cfg: DictConfig) -> dict[str, dict[str, int]]:
    """Mine `<run dir>/<split>.jsonl` from `stage.run_file` for `stage.split` (default: the train split)."""
    stage = cfg.stage
    if not stage.run_file:
        raise ValueError(
            "stage=mine needs stage.run_file=<a run over the split's queries, e.g. from stage=search>"
        )
    split = stage.split or cfg.data.train_split
    data = RetrievalData.from_config(cfg.data)
    run_ = read_run(stage.run_file)
    mining = MiningConfig(**stage.mining, seed=int(cfg.seed))
    answers = data.answers(split)
    qrels = None if answers is not None else data.qrels(split, check_docs=True)
    # training examples are never mined for validation queries (data.val_split)
    queries = {q: t for q, t in data.queries(split).items() if q not in data.validation_ids}
    examples, stats = mine(run_, queries, data.corpus, mining, qrels=qrels, answers=answers)
    if not examples:
        raise ValueError(f"no example could be mined for split '{split}' from {stage.run_file}: {stats}")
    path = write_mined(Path(cfg.paths.output_dir), split, examples, stats)
    log.info("mined %s -> %s", stats, path)
    return {split: stats}
