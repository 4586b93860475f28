"""`stage=teacher_scores`: re-ranker logits for a training-examples file, SimLM's KD teacher.

Every positive and the first `num_negatives` negatives (all by default) of each example are scored
with the re-ranker (examples of validation queries, `data.val_split`, are left out: they are training
data for the distilled retriever); the output `kd_<split>.jsonl` has the same schema, the negatives cut to the scored
ones and every score replaced by the raw logit (5 decimals, as SimLM). Several devices: torchrun, each
rank scores a contiguous slice of the pairs and rank 0 writes.

Cross-fitted teachers (`stage.cross_fit_models`: K re-rankers, the i-th trained without fold i of the
training queries): each example is scored by the re-ranker of its query's fold, so no query is scored
by a model that trained on it; the models' own records of their training queries are checked first.

A blended teacher (`stage.interpolation_from`: a `stage=rerank` metrics.json): the interpolation that
re-ranked the validation queries best, `w x re-ranker + b x BM25 + (1 - w - b) x first stage` (the
examples file's own scores), each standardised over all scored pairs and put back on the re-ranker's
logit scale, so w = 1 gives the logits themselves (`blend_teacher`). When validation gave cross-fitted
re-rankers w = 0, their logits would only set that scale, their sd on queries they never saw: no
re-ranker is loaded and the scale is the one the rerank step measured on the validation queries
(`rerank.reranker_sd`), which no re-ranker trained on either.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from simlm.data.dataset import RetrievalData
from simlm.data.folds import fold_of, read_trained_queries
from simlm.data.formats import ScoredDocs, TrainingExample, read_examples, write_examples
from simlm.models.hub import check_model_source
from simlm.retrieval.bm25 import BM25Retriever
from simlm.retrieval.dense import load_and_score_dense
from simlm.retrieval.rerank import load_and_score, normalize_scores
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import unused_reranker_scale
from simlm.stages.params import NON_EMPTY_TEXT, NON_NEGATIVE_INT, PATH, POSITIVE_INT, Check, optional

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
    "interpolation_from": optional(PATH),
    "cross_fit_models": optional(
        Check(
            "a list of at least 2 model folders",
            lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(m, str) and m for m in v),
        )
    ),
}


def cross_fit_assignment(examples: list[TrainingExample], models: list[str]) -> list[int]:
    """The model index (= fold) scoring each example, after checking that no model trained on its queries.

    Model i must carry the record `stage=train_reranker stage.datamodule.train_fold={folds: K, exclude: i}`
    writes (`simlm.data.folds`); anything else is a ValueError naming the model.
    """
    k = len(models)
    records = []
    for i, model in enumerate(models):
        record = read_trained_queries(model)
        if record is None:
            raise ValueError(
                f"stage.cross_fit_models[{i}] ({model}) has no record of its training queries: train it with "
                f"stage=train_reranker stage.datamodule.train_fold='{{folds: {k}, exclude: {i}}}'"
            )
        if record["folds"] != k or record["excluded_fold"] != i:
            raise ValueError(
                f"stage.cross_fit_models[{i}] ({model}) was trained without fold {record['excluded_fold']} of "
                f"{record['folds']}, but position {i} of {k} models must exclude fold {i} of {k}"
            )
        records.append(record["query_ids"])
    folds = [fold_of(ex.query_id, k) for ex in examples]
    for ex, fold in zip(examples, folds):
        if ex.query_id in records[fold]:
            raise ValueError(
                f"query {ex.query_id!r} is in fold {fold}, but stage.cross_fit_models[{fold}] trained on it"
            )
    return folds


def read_interpolation(path: str | Path) -> tuple[float, float, float]:
    """The validated `(w, b, e)` of a `stage=rerank` metrics.json (`interpolation.weight`, `bm25_weight`,
    `fusion_weight`; absent: 0)."""
    block = _interpolation_block(path)
    return (
        float(block["weight"]),
        float(block.get("bm25_weight", 0.0)),
        float(block.get("fusion_weight", 0.0)),
    )


def read_fusion_model(path: str | Path) -> dict | None:
    """The fusion bi-encoder's model config a `stage=rerank` metrics.json recorded (None: it had none)."""
    model = _interpolation_block(path).get("fusion_model")
    if model is not None and not (isinstance(model, dict) and model.get("name_or_path")):
        raise ValueError(f"{path}: interpolation.fusion_model must be a model config with name_or_path")
    return model


def _rerank_metrics(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage.interpolation_from: no file {path} (a stage=rerank metrics.json)")
    return json.loads(path.read_text())


def _interpolation_block(path: str | Path) -> dict:
    block = _rerank_metrics(path).get("interpolation")
    if not isinstance(block, dict) or "weight" not in block:
        raise ValueError(
            f"{path}: no interpolation.weight (stage.interpolation_from needs stage=rerank's metrics)"
        )
    return block


def blend_teacher(
    reranker: np.ndarray | None,
    first: np.ndarray,
    bm25: np.ndarray | None,
    weight: float,
    bm25_weight: float,
    scale: float | None = None,
    fusion: np.ndarray | None = None,
    fusion_weight: float = 0.0,
) -> np.ndarray:
    """`s x (w z(reranker) + b z(bm25) + e z(fusion) + (1 - w - b - e) z(first))`, z over all pairs: the
    validated interpolation on the re-ranker's logit scale `s` (default `sd(reranker)`; w = 1 returns the
    logits unchanged). With w = 0 the logits may be None and `scale` is required."""
    if weight == 1.0:
        assert reranker is not None, "w = 1 is the re-ranker's logits"
        return reranker
    mixed = (1.0 - weight - bm25_weight - fusion_weight) * normalize_scores(first)
    if weight:
        assert reranker is not None, "a re-ranker weight needs its logits"
        mixed += weight * normalize_scores(reranker)
    for extra, extra_weight, what in ((bm25, bm25_weight, "BM25"), (fusion, fusion_weight, "fusion")):
        if extra_weight:
            assert extra is not None, f"a {what} weight needs the pairs' {what} scores"
            mixed += extra_weight * normalize_scores(extra)
    if scale is None:
        assert reranker is not None, "the teacher's scale is the logits' sd unless given"
        scale = float(np.std(reranker))
    return scale * mixed


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
    blend_from = stage.get("interpolation_from")
    blend = read_interpolation(blend_from) if blend_from else (1.0, 0.0, 0.0)
    fusion_cfg = read_fusion_model(blend_from) if blend_from and blend[2] else None
    if fusion_cfg is not None:
        check_model_source(fusion_cfg["name_or_path"], f"interpolation.fusion_model of {blend_from}")
    # cross-fitted at w = 0: the fold re-rankers' logits would only set the blend's scale, their sd on
    # queries they never saw, which the rerank step measured on the validation queries. (A single
    # re-ranker scores queries it trained on, a sharper scale: its logits are still computed.)
    crossed = bool(stage.get("cross_fit_models"))
    scale = unused_reranker_scale(_rerank_metrics(blend_from)) if crossed and blend_from else None
    models = [] if scale is not None else list(stage.get("cross_fit_models") or [str(stage.model)])
    keys = (
        [f"stage.cross_fit_models[{i}]" for i in range(len(models))] if len(models) > 1 else ["stage.model"]
    )
    for model, key in zip(models, keys):
        check_model_source(model, key)  # before a large corpus is read
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
    if scale is not None:
        log.info("teacher: the re-ranker's validated weight is 0, no logits computed (scale %.4f)", scale)
    owner = cross_fit_assignment(examples, models) if len(models) > 1 else [0] * len(examples)
    pair_owner = np.array(
        [
            i
            for ex, i in zip(examples, owner)
            for _ in range(len(ex.positives.doc_ids) + len(ex.negatives.doc_ids[:n_neg]))
        ]
    )
    scores = np.zeros(len(pairs), dtype=np.float64)
    seconds = 0.0
    for i, model in enumerate(models):
        rows = np.flatnonzero(pair_owner == i)
        if not len(rows):
            continue
        fold_scores, fold_seconds = load_and_score(
            model,
            corpus,
            [pairs[r] for r in rows],
            runtime,
            max_length=int(stage.max_length),
            batch_size=int(stage.batch_size),
            quantize_mode=stage.get("quantize"),
            model_key=keys[i],
        )
        seconds += fold_seconds
        if runtime.is_main:
            scores[rows] = fold_scores
    if not runtime.is_main:
        return {}
    if blend != (1.0, 0.0, 0.0):
        weight, bm25_weight, fusion_weight = blend
        first = np.array(
            [s for ex in examples for s in [*ex.positives.scores, *ex.negatives.scores[:n_neg]]],
            dtype=np.float64,
        )
        queries = {ex.query_id: ex.query for ex in examples}
        id_pairs = [
            (ex.query_id, d)
            for ex in examples
            for d in [*ex.positives.doc_ids, *ex.negatives.doc_ids[:n_neg]]
        ]
        bm25 = BM25Retriever().index(corpus).score_pairs(queries, id_pairs) if bm25_weight else None
        fusion = load_and_score_dense(fusion_cfg, corpus, pairs, runtime) if fusion_cfg else None
        scores = blend_teacher(
            scores if models else None, first, bm25, weight, bm25_weight, scale, fusion, fusion_weight
        )
        log.info(
            "teacher: w = %.1f re-ranker + b = %.1f BM25 + e = %.1f fusion bi-encoder + the rest first stage (%s)",
            *blend,
            blend_from,
        )
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
            "teachers": len(models),
        }
    }
    if blend != (1.0, 0.0, 0.0):
        metrics["teacher_scores"].update(weight=blend[0], bm25_weight=blend[1], fusion_weight=blend[2])
    log.info("teacher scores of %s written to %s", path, out_file)
    teachers = {0: "no re-ranker (w = 0)", 1: stage.model}.get(
        len(models), f"{len(models)} cross-fitted re-rankers"
    )
    print(format_metrics(metrics, title=f"teacher scores of {path} with {teachers}"))
    return metrics
