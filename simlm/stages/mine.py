"""`stage=mine`: a run + judgements -> SimLM training examples with mined hard negatives (spec 7.4, 8.2)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run, write_examples
from simlm.data.io import write_json
from simlm.retrieval.mining import MiningConfig, mine_examples, mine_examples_qa

log = logging.getLogger(__name__)


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
    queries = data.queries(split)
    answers = data.answers(split)
    if answers is not None:
        examples, stats = mine_examples_qa(run_, answers, queries, data.corpus, mining)
    else:
        examples, stats = mine_examples(
            run_, data.qrels(split, check_docs=True), queries, data.corpus, mining
        )
    if not examples:
        raise ValueError(f"no example could be mined for split '{split}' from {stage.run_file}: {stats}")
    out_dir = Path(cfg.paths.output_dir)
    write_examples(out_dir / f"{split}.jsonl", examples)
    write_json(out_dir / f"{split}_mining_stats.json", stats)
    log.info("mined %s -> %s", stats, out_dir / f"{split}.jsonl")
    return {split: stats}
