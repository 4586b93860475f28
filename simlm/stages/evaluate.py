"""`stage=evaluate`: metrics of any run file (TREC or MS MARCO format) against a split's qrels, and,
with `stage.baseline_run_file`, a paired significance test of the run against that baseline."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run
from simlm.evaluation import paired_comparison, per_query, summarize
from simlm.evaluation.metrics import PerQuery
from simlm.stages import Metrics, format_metrics
from simlm.stages.params import PATH, POSITIVE_INT, Check, number, optional

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "run_file": PATH,
    "baseline_run_file": optional(PATH),
    "compare_metrics": optional(
        Check(
            "a non-empty list of metric names",
            lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(m, str) for m in v),
        )
    ),
    "resamples": POSITIVE_INT,
    "confidence": Check("a number strictly between 0 and 1", lambda v: number(0, 1).ok(v) and 0 < v < 1),
}


DEFAULT_IR = ("ndcg@10", "mrr@10")  # what stage.compare_metrics=null compares
DEFAULT_QA = ("acc@20", "acc@100")


def _scored(path: str, data: RetrievalData, split: str) -> tuple[dict[str, float], PerQuery]:
    scored = per_query(read_run(path), data, split, run_name=str(path))
    if scored is None:
        raise FileNotFoundError(
            f"split '{split}' of {data.root} has no qrels (or answers) to evaluate against"
        )
    return summarize(*scored), scored[0]


def _comparison(cfg: DictConfig, run_values: PerQuery, base_values: PerQuery) -> dict[str, Any]:
    stage = cfg.stage
    block: dict[str, Any] = {
        "baseline": str(stage.baseline_run_file),
        "split": cfg.data.eval_split,
        "test": "paired randomisation (sign flip), two-sided; CI: paired bootstrap percentile",
        "seed": int(cfg.seed),
    }
    names = stage.get("compare_metrics") or (DEFAULT_QA if "acc@20" in run_values else DEFAULT_IR)
    for name in names:
        if name not in run_values:
            raise ValueError(
                f"stage.compare_metrics: {name!r} is not a metric of this split ({sorted(run_values)})"
            )
        result = paired_comparison(
            run_values[name],
            base_values[name],
            resamples=int(stage.resamples),
            confidence=float(stage.confidence),
            seed=int(cfg.seed),
        )
        block[name] = result.as_dict()
        print(result.describe(name))
    return block


def run(cfg: DictConfig) -> Metrics:
    """Evaluate `stage.run_file` on `data.eval_split` (and compare it with `stage.baseline_run_file`)."""
    stage = cfg.stage
    if not stage.run_file:
        raise ValueError("stage=evaluate needs stage.run_file=<path to a TREC or MS MARCO run>")
    split = cfg.data.eval_split
    data = RetrievalData.from_config(cfg.data)
    scores, run_values = _scored(stage.run_file, data, split)
    metrics: dict[str, Any] = {split: scores}
    baseline = stage.get("baseline_run_file")
    if baseline:
        metrics[f"{split}_baseline"], base_values = _scored(baseline, data, split)
    print(format_metrics(metrics, title=f"{stage.run_file} on {cfg.data.name}/{split}"))
    if baseline:
        print(f"{stage.run_file} vs the baseline {baseline} (paired, per query):")
        metrics["comparison"] = _comparison(cfg, run_values, base_values)
    return metrics
