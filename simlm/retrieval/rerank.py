"""Cross-encoder scoring and re-ranking: batched pair scoring, rank slicing, SimLM's merge, and the
interpolation of the re-ranker's score with the first stage's (`interpolated_rerank`, `select_weight`).

Scores are the model's single raw logit of `[CLS] query [SEP] title: text [SEP]`
(`simlm.models.cross_encoder`). Scoring is length-sorted inside chunks of `chunk_size` pairs (little
padding, bounded memory), under `torch.inference_mode` in eval mode; results come back in input order.

Several processes (any initialised `torch.distributed` group, e.g. torchrun) each score a contiguous
slice of the pairs and the slices are gathered in rank order, so every rank ends with all scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from simlm.data.corpus import Corpus
from simlm.data.formats import Run, rank_scores, run_score
from simlm.data.tokenization import MAX_LENGTH, passage_text, tokenize_pairs
from simlm.models.cross_encoder import load_reranker
from simlm.models.quantize import quantize
from simlm.progress import progress_bar
from simlm.runtime import (
    Runtime,
    autocast,
    batch_token_budget,
    length_sorted_batches,
    rank,
    rank_slice,
    world_size,
)

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (query text, passage doc id)


def _pad_rows(features: dict[str, list[list[int]]], idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the rows `idx` of unpadded features into tensors (attention mask 0 on padding)."""
    length = max(len(features["input_ids"][i]) for i in idx)
    out = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
        if key not in features:
            continue
        arr = np.full((len(idx), length), fill, dtype=np.int64)
        for r, i in enumerate(idx):
            seq = features[key][i]
            arr[r, : len(seq)] = seq
        out[key] = torch.from_numpy(arr)
    return out


def score_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    max_length: int = MAX_LENGTH,
    batch_size: int = 128,
    precision: str | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Raw logits `[n]` (float32) of (query, passage) text pairs, in input order; length-sorted batches
    (on a CPU capped in padded tokens, as `simlm.retrieval.encoding.encode_features`).

    Runs in eval mode under `torch.inference_mode` on the model's device (the previous mode is restored),
    under autocast for `precision` (`simlm.runtime`; None: full precision). `progress`: see
    `simlm.progress`.
    """
    n = len(queries)
    if n != len(passages):
        raise ValueError(f"{n} queries for {len(passages)} passages")
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return out
    device = next(model.parameters()).device
    enc = tokenize_pairs(tokenizer, queries, passages, max_length, pad=False)
    features = {k: list(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
    lengths = [len(ids) for ids in features["input_ids"]]
    batches = length_sorted_batches(lengths, batch_size, batch_token_budget(device))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(precision, device):
            for idx in progress_bar(batches, "score pairs", progress):
                batch = {k: t.to(device) for k, t in _pad_rows(features, idx, tokenizer.pad_token_id).items()}
                out[idx] = model(**batch).logits[:, 0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def score_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    corpus: Corpus,
    pairs: Sequence[Pair],
    *,
    max_length: int = MAX_LENGTH,
    batch_size: int = 128,
    precision: str | None = None,
    chunk_size: int = 16384,
) -> np.ndarray:
    """Logits of `(query text, doc id)` pairs; passage texts are fetched chunk by chunk (bounded memory)."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk_size):
        chunk = pairs[start : start + chunk_size]
        docs = corpus.passages([corpus.row(d) for _, d in chunk])
        out[start : start + len(chunk)] = score_texts(
            model,
            tokenizer,
            [q for q, _ in chunk],
            [passage_text(p.title, p.text) for p in docs],
            max_length=max_length,
            batch_size=batch_size,
            precision=precision,
        )
    return out


def score_pairs_distributed(
    model: torch.nn.Module, tokenizer: Any, corpus: Corpus, pairs: Sequence[Pair], **kwargs: Any
) -> np.ndarray:
    """`score_pairs` with each rank of the torch.distributed group scoring a contiguous slice.

    Every rank returns all scores (slices gathered in rank order); one process scores everything.
    """
    start, end = rank_slice(len(pairs), rank(), world_size())
    local = score_pairs(model, tokenizer, corpus, pairs[start:end], **kwargs)
    if world_size() == 1:
        return local
    slices: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(slices, local)
    return np.concatenate(slices)


def load_and_score(
    model_name_or_path: str,
    corpus: Corpus,
    pairs: Sequence[Pair],
    runtime: Runtime,
    *,
    max_length: int = MAX_LENGTH,
    batch_size: int = 128,
    quantize_mode: str | None = None,
    model_key: str = "stage.model",
) -> tuple[np.ndarray, float]:
    """Load the cross-encoder onto `runtime`'s device (int8-quantised with `quantize_mode="int8"`) and
    score `pairs` across its ranks: `(scores, seconds)`.

    `model_key`: the config key naming the model (for the error when it is neither a folder nor a hub id).
    """
    model, tokenizer = load_reranker(model_name_or_path, key=model_key)
    model = quantize(model.to(runtime.device), quantize_mode)
    started = time.perf_counter()
    scores = score_pairs_distributed(
        model,
        tokenizer,
        corpus,
        pairs,
        max_length=max_length,
        batch_size=batch_size,
        precision=runtime.precision,
    )
    seconds = time.perf_counter() - started
    log.info("%d pairs scored in %.1f s (%.0f pairs/s)", len(pairs), seconds, len(pairs) / max(seconds, 1e-9))
    return scores, seconds


def merge_reranked(run: Run, scores: dict[str, dict[str, float]], depth: int) -> Run:
    """SimLM's re-rank merge (`src/data_utils.py` of the original), per query of `run`: the one merge of
    `stage=rerank` and of the re-ranker's validation.

    The top-`depth` candidates are ordered by their re-ranker score (ties by doc id); everything else
    of the run follows in its original order with synthetic scores (lowest re-ranked score - i - 1), so
    the merged scores still sort into the merged order. Top-`depth` candidates without a score (a
    partial validation pass) are placed first among the rest.
    """
    merged: Run = {}
    for qid, ranking in run.items():
        scored = scores.get(qid, {})
        head = ranking[:depth]
        top = rank_scores((d, run_score(scored[d])) for d, _ in head if d in scored)
        rest = [d for d, _ in head if d not in scored] + [d for d, _ in ranking[depth:]]
        floor = top[-1][1] if top else 0.0
        merged[qid] = top + [(d, run_score(floor - i - 1)) for i, d in enumerate(rest)]
    return merged


def scores_by_query(pairs: Iterable[tuple[str, str]], scores: Iterable[float]) -> dict[str, dict[str, float]]:
    """`{qid: {doc id: score}}` of scored `(qid, doc id)` candidate pairs, the input of `merge_reranked`.

    A pair seen twice (ranks padding their last batch) keeps its last score.
    """
    by_query: dict[str, dict[str, float]] = {}
    for (qid, doc_id), score in zip(pairs, scores):
        by_query.setdefault(qid, {})[doc_id] = float(score)
    return by_query


# --------------------------------------------------------------------------- interpolation with the first stage
NORMALIZATIONS = ("zscore", "minmax")
# the validated interpolation weights of the re-ranker's score: 0 (the first stage alone) to 1 (the re-ranker alone)
WEIGHTS = tuple(i / 10 for i in range(11))
# and of BM25's (a hybrid with the first stage, stage.bm25_weight=validate): up to half the final score;
# a second bi-encoder's (stage.fusion_weight=validate) likewise
LEXICAL_WEIGHTS = tuple(i / 10 for i in range(6))


def normalize_scores(values: Sequence[float], how: str = "zscore") -> np.ndarray:
    """One query's candidate scores on a common scale: `zscore` (mean 0, standard deviation 1) or
    `minmax` (0 to 1). Equal scores (or a single candidate) carry no order and become all 0."""
    x = np.asarray(values, dtype=np.float64)
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {how!r}")
    if x.size == 0:
        return x
    spread = x.std() if how == "zscore" else x.max() - x.min()
    if spread <= 0.0:
        return np.zeros_like(x)
    return (x - x.mean()) / spread if how == "zscore" else (x - x.min()) / spread


def interpolate_scores(
    run: Run,
    scores: dict[str, dict[str, float]],
    depth: int,
    weight: float,
    how: str = "zscore",
    lexical: dict[str, dict[str, float]] | None = None,
    lexical_weight: float = 0.0,
    fusion: dict[str, dict[str, float]] | None = None,
    fusion_weight: float = 0.0,
) -> dict[str, dict[str, float]]:
    """`weight x re-ranker + lexical_weight x BM25 + fusion_weight x a second bi-encoder + the rest x first
    stage` for each query's scored top-`depth` candidates, every score normalised per query over those
    candidates (`normalize_scores`); `lexical` / `fusion` hold the candidates' BM25 / second bi-encoder
    scores (needed when their weight is > 0)."""
    fused: dict[str, dict[str, float]] = {}
    for qid, ranking in run.items():
        scored = scores.get(qid, {})
        head = [(d, s) for d, s in ranking[:depth] if d in scored]
        if not head:
            continue
        first = normalize_scores([s for _, s in head], how)
        second = normalize_scores([scored[d] for d, _ in head], how)
        mixed = weight * second + (1.0 - weight - lexical_weight - fusion_weight) * first
        for extra, extra_weight, what in (
            (lexical, lexical_weight, "BM25"),
            (fusion, fusion_weight, "fusion"),
        ):
            if extra_weight:
                assert extra is not None, f"a {what} weight needs the candidates' {what} scores"
                mixed += extra_weight * normalize_scores([extra[qid][d] for d, _ in head], how)
        fused[qid] = {d: float(v) for (d, _), v in zip(head, mixed)}
    return fused


def interpolated_rerank(
    run: Run,
    scores: dict[str, dict[str, float]],
    depth: int,
    weight: float,
    how: str = "zscore",
    lexical: dict[str, dict[str, float]] | None = None,
    lexical_weight: float = 0.0,
    fusion: dict[str, dict[str, float]] | None = None,
    fusion_weight: float = 0.0,
) -> Run:
    """The re-ranked run at interpolation `weight` (with BM25's `lexical_weight` and a second bi-encoder's
    `fusion_weight`): all 0 return `run` itself (the first stage, unchanged), `weight` 1 the re-ranker's
    order and raw scores (`merge_reranked`), anything between the interpolated scores
    (`interpolate_scores`)."""
    weights = (weight, lexical_weight, fusion_weight)
    if not (all(0.0 <= w <= 1.0 for w in weights) and sum(weights) <= 1.0 + 1e-9):
        raise ValueError(f"the interpolation weights must be from 0 to 1 and sum to at most 1, got {weights}")
    if not any(weights):
        return {qid: list(ranking) for qid, ranking in run.items()}
    if weight == 1.0:
        return merge_reranked(run, scores, depth)
    fused = interpolate_scores(
        run, scores, depth, weight, how, lexical, lexical_weight, fusion, fusion_weight
    )
    return merge_reranked(run, fused, depth)


def head_only(run: Run, depth: int, metric: str) -> Run:
    """`run` cut to each query's top `depth` when `metric` (`name@k`, k <= depth) sees nothing below it.

    Re-ranking reorders only the top `depth` and keeps the rest below it in order, and a cut-off metric
    (nDCG@k, MRR@k, recall@k, acc@k) depends on the top k alone: validating the weights on the cut run
    gives the same values as on the whole one, without merging and scoring every query's tail at each
    grid point. Other metrics (MAP, a cut-off beyond `depth`) get `run` itself.
    """
    name, _, cutoff = metric.rpartition("@")
    if not (name and cutoff.isdigit() and int(cutoff) <= depth):
        return run
    return {qid: ranking[:depth] for qid, ranking in run.items()}


def select_weight(
    score_of: Callable[[Any], float], weights: Sequence[Any] = WEIGHTS, tolerance: float = 1e-9
) -> tuple[Any, dict[Any, float]]:
    """The weight with the best `score_of(weight)` (a validation metric) and every weight's score.

    Weights (numbers, or tuples of them compared element by element) are tried in ascending order and a
    later one wins only by more than `tolerance`: ties go to the smaller weight, i.e. towards the first
    stage, which the re-ranker must beat to move anything.
    """

    def key(w: Any) -> Any:
        return tuple(float(x) for x in w) if isinstance(w, tuple) else float(w)

    grid = {key(w): float(score_of(key(w))) for w in sorted(weights)}
    best = None
    for w, value in grid.items():
        if best is None or value > grid[best] + tolerance:
            best = w
    assert best is not None, "no weights to choose from"
    return best, grid
