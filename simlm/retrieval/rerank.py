"""Cross-encoder scoring and re-ranking: pair formatting, batched scoring, rank slicing, SimLM's merge.

A pair is `[CLS] query [SEP] title: text [SEP]` (title and ": " only when the passage has a title),
truncated longest-first to `max_length` (SimLM: 192 for MS MARCO). Scores are the model's single raw
logit. Scoring is length-sorted inside chunks of `chunk_size` pairs (little padding, bounded memory),
under `torch.inference_mode` in eval mode; results come back in input order.

Several processes (any initialised `torch.distributed` group, e.g. torchrun) each score a contiguous
slice of the pairs and the slices are gathered in rank order, so every rank ends with all scores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from simlm.data.corpus import Corpus
from simlm.data.formats import Run, rank_scores, run_score
from simlm.progress import progress_bar
from simlm.retrieval.encoding import dist_rank_world, rank_slice

log = logging.getLogger(__name__)

MAX_LENGTH = 192
Pair = tuple[str, str]  # (query text, passage doc id)


def passage_text(title: str, text: str) -> str:
    """SimLM's cross-encoder passage: `title: text`, or the text alone when there is no title."""
    return f"{title}: {text}" if title else text


def load_reranker_model(name_or_path: str, with_new_weights: bool = False) -> Any:
    """`AutoModelForSequenceClassification` with one logit (hub id or folder; encoder-only checkpoints such
    as ELECTRA's discriminator or BERT/MiniLM get a newly initialised head).

    `with_new_weights`: return `(model, names)`, the names of the parameters the checkpoint did not hold.
    """
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path), num_labels=1, output_loading_info=True
    )
    if not with_new_weights:
        return model
    params = {name for name, _ in model.named_parameters()}
    return model, sorted(set(info.get("missing_keys") or ()) & params)


def load_reranker(name_or_path: str) -> tuple[torch.nn.Module, Any]:
    """The one-logit model of `load_reranker_model` and its tokenizer."""
    from transformers import AutoTokenizer

    return load_reranker_model(name_or_path), AutoTokenizer.from_pretrained(str(name_or_path))


def tokenize_pairs(
    tokenizer: Any, queries: Sequence[str], passages: Sequence[str], max_length: int, pad: bool = True
) -> Any:
    """Tokenise (query, passage) pairs, truncated longest-first to `max_length`."""
    return tokenizer(
        list(queries),
        list(passages),
        max_length=max_length,
        truncation=True,
        padding=pad,
        return_tensors="pt" if pad else None,
    )


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
    fp16: bool = False,
    progress: bool | None = None,
) -> np.ndarray:
    """Raw logits `[n]` (float32) of (query, passage) text pairs, in input order; length-sorted batches.

    Runs in eval mode under `torch.inference_mode` on the model's device (the previous mode is restored).
    `fp16` enables float16 autocast on CUDA (ignored elsewhere). `progress`: see `simlm.progress`.
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
    lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if fp16 and device.type == "cuda"
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            for start in progress_bar(range(0, n, batch_size), "score pairs", progress):
                idx = order[start : start + batch_size]
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
    fp16: bool = False,
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
            fp16=fp16,
        )
    return out


def score_pairs_distributed(
    model: torch.nn.Module, tokenizer: Any, corpus: Corpus, pairs: Sequence[Pair], **kwargs: Any
) -> np.ndarray:
    """`score_pairs` with each rank of the torch.distributed group scoring a contiguous slice.

    Every rank returns all scores (slices gathered in rank order); one process scores everything.
    """
    rank, world = dist_rank_world()
    start, end = rank_slice(len(pairs), rank, world)
    local = score_pairs(model, tokenizer, corpus, pairs[start:end], **kwargs)
    if world == 1:
        return local
    slices: list[Any] = [None] * world
    torch.distributed.all_gather_object(slices, local)
    return np.concatenate(slices)


def rerank_candidates(run: Run, depth: int) -> list[tuple[str, str]]:
    """The `(qid, doc id)` pairs to score: each query's top `depth`, queries in string order (as SimLM)."""
    return [(qid, doc_id) for qid in sorted(run) for doc_id, _ in run[qid][:depth]]


def merge_reranked(run: Run, scores: dict[str, dict[str, float]], depth: int) -> Run:
    """SimLM's re-rank merge (spec 3.4), per query of `run`.

    The top-`depth` candidates are ordered by their re-ranker score (ties by doc id); everything else
    of the run follows in its original order with synthetic scores (lowest re-ranked score − i − 1), so
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
