"""`stage=teacher_scores`: re-ranker logits for a training-examples file, SimLM's KD teacher.

Every positive and the first `num_negatives` negatives (all by default) of each example are scored
with the re-ranker (examples of validation queries, `data.val_split`, are left out: they are training
data for the distilled retriever); the output `kd_<split>.jsonl` has the same schema, the negatives cut to the scored
ones and every score replaced by the raw logit (5 decimals, as SimLM). Several devices: torchrun, each
rank scores a contiguous slice of the pairs and rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.formats import ScoredDocs, TrainingExample, read_examples, write_examples
from simlm.models.hub import check_model_source
from simlm.retrieval.rerank import load_and_score
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.params import NON_EMPTY_TEXT, NON_NEGATIVE_INT, PATH, POSITIVE_INT, optional

log = logging.getLogger(__name__)

DECIMALS = 5

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "model": NON_EMPTY_TEXT,
    "examples_file": optional(PATH),
    "split": NON_EMPTY_TEXT,
    "max_examples": optional(POSITIVE_INT),
    "num_negatives": optional(NON_NEGATIVE_INT),
    "max_length": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "out_file": PATH,
}


def teacher_examples(
    examples: list[TrainingExample], scores: np.ndarray, num_negatives: int | None
) -> list[TrainingExample]:
    """Examples whose positives and first `num_negatives` negatives carry `scores` (flattened in that order)."""
    out, i = [], 0
    for ex in examples:
        pos = ex.positives.doc_ids
        neg = ex.negatives.doc_ids[:num_negatives]
        pos_scores = [round(float(s), DECIMALS) for s in scores[i : i + len(pos)]]
        i += len(pos)
        neg_scores = [round(float(s), DECIMALS) for s in scores[i : i + len(neg)]]
        i += len(neg)
        out.append(
            TrainingExample(
                ex.query_id,
                ex.query,
                ScoredDocs(list(pos), pos_scores),
                ScoredDocs(list(neg), neg_scores),
                ex.answers,
            )
        )
    if i != len(scores):
        raise ValueError(f"{len(scores)} scores for {i} pairs")
    return out


def run(cfg: DictConfig) -> Metrics:
    """Score `stage.examples_file` with `stage.model` into `stage.out_file`; return counts and teacher accuracy."""
    runtime = Runtime.from_config(cfg)
    with runtime.process_group():
        return runtime.broadcast(_score(cfg, runtime))


def _score(cfg: DictConfig, runtime: Runtime) -> Metrics:
    stage = cfg.stage
    check_model_source(stage.model, "stage.model")  # before a large corpus is read
    data = RetrievalData.from_config(cfg.data)
    corpus = data.corpus
    path = stage.get("examples_file") or data.examples_path(str(stage.split))
    if path is None:
        raise FileNotFoundError(
            f"no {stage.split}.jsonl in {data.root}: pass stage.examples_file=<training examples jsonl>"
        )
    examples = read_examples(path, doc_ids=corpus)
    validation = data.validation_ids
    kept = [ex for ex in examples if ex.query_id not in validation]
    if len(kept) < len(examples):
        log.info("%d examples of validation queries left out (data.val_split)", len(examples) - len(kept))
    examples = kept
    if stage.get("max_examples"):  # small budgets (the demo pipeline): score the first N examples only
        examples = examples[: int(stage.max_examples)]
    n_neg = None if stage.get("num_negatives") is None else int(stage.num_negatives)
    pairs = [
        (ex.query, doc_id)
        for ex in examples
        for doc_id in [*ex.positives.doc_ids, *ex.negatives.doc_ids[:n_neg]]
    ]
    scores, seconds = load_and_score(
        str(stage.model),
        corpus,
        pairs,
        runtime,
        max_length=int(stage.max_length),
        batch_size=int(stage.batch_size),
        quantize_mode=stage.get("quantize"),
    )
    if not runtime.is_main:
        return {}
    scored = teacher_examples(examples, scores, n_neg)
    out_file = Path(stage.out_file)
    write_examples(out_file, scored)
    # teacher accuracy: the best positive outscores every scored negative
    correct = sum(
        1 for ex in scored if not ex.negatives.scores or max(ex.positives.scores) > max(ex.negatives.scores)
    )
    metrics: Metrics = {
        "teacher_scores": {
            "examples": len(scored),
            "pairs": len(pairs),
            "seconds": round(seconds, 3),
            "pairs_per_s": round(len(pairs) / seconds, 1) if seconds > 0 else 0.0,
            "positive_top1": correct / len(scored),
        }
    }
    log.info("teacher scores of %s written to %s", path, out_file)
    print(format_metrics(metrics, title=f"teacher scores of {path} with {stage.model}"))
    return metrics
