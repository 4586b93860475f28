"""`stage=rerank`: re-rank the top `depth` candidates of a run with a cross-encoder (SimLM's `src/inference/rerank_main.py`).

Each query's top `depth` candidates are ordered by `w x re-ranker + (1 - w) x first stage`, both scores
normalised per query (`stage.normalize`: z-score by default); the rest of the run stays below them in
its original order. `stage.interpolation=validate` (the default) chooses w in 0, 0.1, ..., 1 on the
validation split (`data.val_split`), re-ranking `stage.val_run_file` (the same first stage's run of
the validation queries) and maximising `stage.interpolation_metric`, ties going to the smaller w: a
re-ranker that does not beat the first stage on validation gets w = 0 and leaves the run as it is. A
number fixes w (1: the re-ranker's score alone, SimLM's re-ranking). `stage.bm25_weight` adds BM25's score
of each candidate as a third term, `w x re-ranker + b x BM25 + (1 - w - b) x first stage` (a hybrid of
the first stage with BM25 under the re-ranker; `validate` chooses b in 0, ..., 0.5 with w, 0 leaves BM25
out, SimLM's re-ranking). `stage.fusion_model` (a second bi-encoder: a model config, e.g. the zero-shot
MiniLM) and `stage.fusion_weight` add its score as a fourth term the same way (e; `validate`: 0, ..., 0.5,
chosen with w and b). Writes `<split>.trec` and
`<split>.msmarco.txt` (and the validation split's), and returns the metrics of the re-ranked runs and
of the input runs (`<split>_input`), the weight with its validation grid (`interpolation`), and the
re-ranker's score sd over the validation pairs (`rerank.reranker_sd`: a blended KD teacher's scale).
Several devices: `torchrun --nproc_per_node=N run.py stage=rerank ...`; each rank scores a contiguous
slice of the pairs, rank 0 merges and writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from simlm.data.dataset import RetrievalData
from simlm.data.formats import Run, read_run, rerank_candidates
from simlm.evaluation import evaluate
from simlm.models.hub import check_model_source
from simlm.retrieval.bm25 import BM25Retriever
from simlm.retrieval.dense import load_and_score_dense
from simlm.retrieval.rerank import (
    LEXICAL_WEIGHTS,
    NORMALIZATIONS,
    WEIGHTS,
    head_only,
    interpolated_rerank,
    load_and_score,
    scores_by_query,
    select_weight,
)
from simlm.runtime import Runtime
from simlm.stages import Metrics, format_metrics
from simlm.stages.common import write_run_files
from simlm.stages.params import NON_EMPTY_TEXT, PATH, POSITIVE_INT, TAG, Check, one_of, optional

log = logging.getLogger(__name__)

VALIDATE = "validate"
INTERPOLATION = Check(
    f"'{VALIDATE}' or a number from 0 to 1",
    lambda v: v == VALIDATE or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1),
)
Weights = tuple[float, float, float]  # (the re-ranker's w, BM25's b, the fusion bi-encoder's e)
FUSION_MODEL = Check(
    "a model config with name_or_path (e.g. {name_or_path: <folder or hub id>, pooling: mean}) or a folder",
    lambda v: (isinstance(v, str) and bool(v)) or (isinstance(v, dict) and bool(v.get("name_or_path"))),
)

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "model": NON_EMPTY_TEXT,
    "run_file": PATH,
    "val_run_file": optional(PATH),
    "split": NON_EMPTY_TEXT,
    "depth": POSITIVE_INT,
    "max_length": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "tag": TAG,
    "interpolation": INTERPOLATION,
    "bm25_weight": INTERPOLATION,
    "fusion_weight": INTERPOLATION,
    "fusion_model": optional(FUSION_MODEL),
    "normalize": one_of(*NORMALIZATIONS),
    "interpolation_metric": NON_EMPTY_TEXT,
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


def _read_split_run(path: str, data: RetrievalData, split: str, key: str) -> tuple[Run, dict[str, str]]:
    """The run at `path` and the queries of `split`; every query it ranks must be one of them."""
    queries = data.queries(split)
    run_in = read_run(path)
    unknown = [q for q in run_in if q not in queries]
    if unknown:
        raise ValueError(
            f"{path} ranks {len(unknown)} queries that split '{split}' does not have "
            f"(e.g. {unknown[0]!r}): pass the run of split '{split}' as {key}"
        )
    return run_in, queries


def _validation_inputs(cfg: DictConfig, data: RetrievalData) -> tuple[str, Run, dict[str, str]]:
    """The validation split's name, its first-stage run (`stage.val_run_file`) and its queries."""
    stage = cfg.stage
    fix = "or fix the weight: stage.interpolation=<0 to 1> (1: the re-ranker's score alone)"
    if data.val_split is None:
        raise ValueError(
            f"stage.interpolation={VALIDATE} chooses the weight on the validation split, but data.val_split "
            f"is null: set data.val_split (a dev split, or holdout:<n or fraction>), {fix}"
        )
    if not stage.get("val_run_file"):
        raise ValueError(
            f"stage.interpolation={VALIDATE} needs stage.val_run_file=<the same first stage's run of the "
            f"validation split '{data.val_split}'> (stage=search/bm25 and the training stages write "
            f"{data.val_split}.trec), {fix}"
        )
    if data.val_split == str(stage.split):
        log.warning(
            "the validation split is the evaluated split (%s): the weight is chosen on the queries it is "
            "reported on",
            data.val_split,
        )
    run_val, queries = _read_split_run(str(stage.val_run_file), data, data.val_split, "stage.val_run_file")
    return data.val_split, run_val, queries


def _weight_grid(stage: DictConfig) -> list[Weights]:
    """The (w, b, e) to validate: each weight's grid where it is `validate`, else its fixed value."""
    mode, lexical, fusion = (
        stage.get("interpolation", VALIDATE),
        stage.get("bm25_weight", 0),
        _fusion_mode(stage),
    )
    ws = WEIGHTS if mode == VALIDATE else (float(mode),)
    bs = LEXICAL_WEIGHTS if lexical == VALIDATE else (float(lexical),)
    es = LEXICAL_WEIGHTS if fusion == VALIDATE else (float(fusion),)
    grid = [(w, b, e) for w in ws for b in bs for e in es if w + b + e <= 1.0 + 1e-9]
    if not grid:
        raise ValueError(
            f"stage.interpolation={mode}, stage.bm25_weight={lexical} and stage.fusion_weight={fusion} "
            "sum to more than 1"
        )
    return grid


def _fusion_mode(stage: DictConfig) -> Any:
    """`stage.fusion_weight`, checked against `stage.fusion_model` (a weight needs a model; a model alone is
    validated)."""
    weight, model = stage.get("fusion_weight", 0), stage.get("fusion_model")
    if weight != 0 and not model:
        raise ValueError(
            f"stage.fusion_weight={weight} weighs a second bi-encoder's score, but stage.fusion_model is null: "
            "set stage.fusion_model={name_or_path: <folder or hub id>, pooling: ...}, or stage.fusion_weight=0"
        )
    return weight


def fusion_model_config(value: Any) -> dict[str, Any]:
    """`stage.fusion_model` as a plain model config mapping (a folder or hub id alone: its saved settings)."""
    if isinstance(value, str):
        return {"name_or_path": value}
    plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else dict(value)
    return {str(k): v for k, v in plain.items() if v is not None}


def _rerank(cfg: DictConfig, runtime: Runtime) -> Metrics:
    stage = cfg.stage
    split, depth = str(stage.split), int(stage.depth)
    mode, lexical_mode = stage.get("interpolation", VALIDATE), stage.get("bm25_weight", 0)
    fusion_mode = _fusion_mode(stage)
    validate = VALIDATE in (mode, lexical_mode, fusion_mode)
    how = str(stage.get("normalize", "zscore"))
    check_model_source(stage.model, "stage.model")  # before a large corpus is read
    fusion_cfg = fusion_model_config(stage.fusion_model) if fusion_mode != 0 else None
    if fusion_cfg is not None:
        check_model_source(fusion_cfg["name_or_path"], "stage.fusion_model.name_or_path")
    data = RetrievalData.from_config(cfg.data)
    run_in, queries = _read_split_run(str(stage.run_file), data, split, "stage.run_file")
    val_split, run_val, val_queries = _validation_inputs(cfg, data) if validate else (None, {}, {})
    candidates = rerank_candidates(run_in, depth)
    val_candidates = rerank_candidates(run_val, depth)
    pairs = [(queries[q], d) for q, d in candidates] + [(val_queries[q], d) for q, d in val_candidates]
    scores, seconds = load_and_score(
        str(stage.model),
        data.corpus,
        pairs,
        runtime,
        max_length=int(stage.max_length),
        batch_size=int(stage.batch_size),
        quantize_mode=stage.get("quantize"),
    )
    if not runtime.is_main:
        return {}
    scores = scores.tolist()
    by_query = scores_by_query(candidates, scores[: len(candidates)])
    uses_bm25 = lexical_mode != 0
    bm25 = BM25Retriever().index(data.corpus) if uses_bm25 else None
    lexical = scores_by_query(candidates, bm25.score_pairs(queries, candidates)) if bm25 else None
    fusion = val_fusion = None
    if fusion_cfg is not None:  # the cross-encoder's pairs: one encode of both splits' candidates
        dense = load_and_score_dense(fusion_cfg, data.corpus, pairs, runtime).tolist()
        fusion = scores_by_query(candidates, dense[: len(candidates)])
        val_fusion = scores_by_query(val_candidates, dense[len(candidates) :])
    out_dir, tag = Path(cfg.paths.output_dir), str(stage.get("tag", "rerank"))
    metrics: Metrics = {}
    if val_split is not None:
        val_by_query = scores_by_query(val_candidates, scores[len(candidates) :])
        val_lexical = (
            scores_by_query(val_candidates, bm25.score_pairs(val_queries, val_candidates)) if bm25 else None
        )
        weights, grid = _choose_weights(cfg, data, val_split, run_val, val_by_query, val_lexical, val_fusion)
        reranked_val = interpolated_rerank(
            run_val, val_by_query, depth, weights[0], how, val_lexical, weights[1], val_fusion, weights[2]
        )
        write_run_files(out_dir, val_split, reranked_val, tag=tag)
        metrics[val_split] = evaluate(reranked_val, data, val_split) or {}
        metrics[f"{val_split}_input"] = evaluate(run_val, data, val_split) or {}
    else:
        weights, grid = _weight_grid(stage)[0], {}
    reranked = interpolated_rerank(
        run_in, by_query, depth, weights[0], how, lexical, weights[1], fusion, weights[2]
    )
    write_run_files(out_dir, split, reranked, tag=tag)
    after = evaluate(reranked, data, split)
    if after is not None:
        metrics[split] = after
        metrics[f"{split}_input"] = evaluate(run_in, data, split) or {}
    metrics["interpolation"] = _interpolation_block(cfg, weights, grid, val_split, uses_bm25, fusion_cfg)
    # the re-ranker's logit scale on queries it never trained on (validation, else the evaluated split):
    # a blended KD teacher that gives the re-ranker w = 0 uses it instead of computing any logits
    unseen = (
        scores[len(candidates) :] if val_split is not None and val_candidates else scores[: len(candidates)]
    )
    metrics["rerank"] = {
        "pairs": len(pairs),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(pairs) / seconds, 1) if seconds > 0 else 0.0,
        "reranker_sd": round(float(np.std(unseen)), 6) if unseen else 0.0,
    }
    shown = {k: v for k, v in metrics.items() if k != "interpolation"}
    print(format_metrics(shown, title=f"re-rank top {depth} of {stage.run_file} with {stage.model}"))
    print(_describe(metrics["interpolation"]))
    return metrics


def _choose_weights(
    cfg: DictConfig,
    data: RetrievalData,
    split: str,
    run_val: Run,
    scores: dict[str, dict[str, float]],
    lexical: dict[str, dict[str, float]] | None,
    fusion: dict[str, dict[str, float]] | None,
) -> tuple[Weights, dict[Weights, float]]:
    """The (w, b, e) maximising `stage.interpolation_metric` on the validation run (ties: the smaller w,
    then b, then e)."""
    stage = cfg.stage
    metric = str(stage.get("interpolation_metric", "ndcg@10"))
    depth, how = int(stage.depth), str(stage.get("normalize", "zscore"))

    head = head_only(run_val, depth, metric)

    def score_of(weights: Weights) -> float:
        reranked = interpolated_rerank(
            head, scores, depth, weights[0], how, lexical, weights[1], fusion, weights[2]
        )
        got = evaluate(reranked, data, split) or {}
        if metric not in got:
            raise ValueError(
                f"stage.interpolation_metric={metric!r} is not a metric of split '{split}' "
                f"(it has {sorted(k for k in got if k != 'mrr_threshold')})"
            )
        return float(got[metric])

    weights, grid = select_weight(score_of, _weight_grid(stage))
    log.info(
        "interpolation weights (w, b, e) %s chosen on %s (%s by weights: %s)", weights, split, metric, grid
    )
    return weights, grid


def _interpolation_block(
    cfg: DictConfig,
    weights: Weights,
    grid: dict[Weights, float],
    val_split: str | None,
    uses_bm25: bool,
    fusion_cfg: dict[str, Any] | None,
) -> dict[str, Any]:
    stage = cfg.stage
    block: dict[str, Any] = {
        "weight": weights[0],
        "chosen_by": f"validation ({val_split})" if val_split else "stage.interpolation",
        "normalize": str(stage.get("normalize", "zscore")),
    }
    if uses_bm25 or fusion_cfg is not None:
        block["bm25_weight"] = weights[1]
    if fusion_cfg is not None:  # what stage=teacher_scores needs to blend the same fourth score
        block["fusion_weight"] = weights[2]
        block["fusion_model"] = fusion_cfg
    if grid:
        block["metric"] = str(stage.get("interpolation_metric", "ndcg@10"))
        block["validation_split"] = val_split
        width = 3 if fusion_cfg is not None else 2 if uses_bm25 else 1
        block["grid"] = {",".join(f"{x:.1f}" for x in key[:width]): round(v, 6) for key, v in grid.items()}
    return block


def _describe(block: dict[str, Any]) -> str:
    """One line: the weights, how they were chosen and the validation grid."""
    text = f"interpolation weight w = {block['weight']:.1f} of the re-ranker's score"
    if "bm25_weight" in block:
        text += f" and b = {block['bm25_weight']:.1f} of BM25's"
    if "fusion_weight" in block:
        text += f" and e = {block['fusion_weight']:.1f} of {block['fusion_model']['name_or_path']}'s"
    text += f", chosen by {block['chosen_by']}"
    if "grid" in block:
        cells = "  ".join(f"{w}: {v:.4f}" for w, v in block["grid"].items())
        by = "(w,b,e)" if "fusion_weight" in block else "(w,b)" if "bm25_weight" in block else "w"
        text += f"; {block['metric']} by {by}: {cells}"
    return text
