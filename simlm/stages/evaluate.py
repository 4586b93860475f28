"""`stage=evaluate`: metrics of any run file (TREC or MS MARCO format) against a split's qrels."""

from __future__ import annotations

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run
from simlm.evaluation import evaluate
from simlm.stages import Metrics, format_metrics
from simlm.stages.params import PATH

# checked before the stage runs (simlm.stages.params)
PARAMS = {"run_file": PATH}


def run(cfg: DictConfig) -> Metrics:
    """Evaluate `stage.run_file` on `data.eval_split`."""
    if not cfg.stage.run_file:
        raise ValueError("stage=evaluate needs stage.run_file=<path to a TREC or MS MARCO run>")
    split = cfg.data.eval_split
    data = RetrievalData.from_config(cfg.data)
    scores = evaluate(read_run(cfg.stage.run_file), data, split, run_name=str(cfg.stage.run_file))
    if scores is None:
        raise FileNotFoundError(
            f"split '{split}' of {data.root} has no qrels (or answers) to evaluate against"
        )
    metrics = {split: scores}
    print(format_metrics(metrics, title=f"{cfg.stage.run_file} on {cfg.data.name}/{split}"))
    return metrics
