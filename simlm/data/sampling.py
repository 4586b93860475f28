"""Epoch-seeded groups of one positive + (n-1) negatives, exactly as SimLM samples them
(`src/loaders/loader_utils.py` of the original)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from simlm.data.corpus import Corpus
from simlm.data.formats import TrainingExample

RANDOM_FILL_SCORE = float("nan")  # a topped-up random passage has no retriever/teacher score
FILLS = ("random", "repeat")  # how a short negative list is completed


@dataclass(frozen=True)
class Group:
    """The sampled passages of one query: `doc_ids[0]` is the positive; `scores` follow the ids."""

    doc_ids: list[str]
    scores: list[float]
    n_random: int = 0


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def sample_group(
    example: TrainingExample,
    n_passages: int,
    epoch: int,
    seed: int,
    corpus: Corpus | None,
    fill: str = "random",
) -> Group:
    """SimLM's deterministic group for `epoch`.

    offset = epoch + seed; positive = positives[offset mod |P|]; negatives = the cyclic window
    negatives[(offset * (n-1) + i) mod |N|] for i < n-1, which moves by n-1 every epoch. When the
    example holds fewer than n-1 negatives, `fill` decides: "random" takes each once and random corpus
    passages (never a positive, never repeated; seeded by seed, epoch and query id; score NaN) fill the
    rest; "repeat" lets SimLM's cyclic window wrap, repeating negatives with their scores (teacher
    scores stay defined, as KD needs).
    """
    if n_passages < 1:
        raise ValueError("n_passages must be >= 1")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    offset = epoch + seed
    pos = example.positives
    pos_idx = offset % len(pos.doc_ids)
    doc_ids = [pos.doc_ids[pos_idx]]
    scores = [pos.scores[pos_idx]]
    n_neg = n_passages - 1
    negs = example.negatives
    if n_neg == 0:
        return Group(doc_ids, scores)
    if fill == "repeat" and not negs.doc_ids:
        raise ValueError(f"query {example.query_id!r} has no negatives to repeat (fill='repeat')")
    if len(negs.doc_ids) >= n_neg or fill == "repeat":
        for i in range(n_neg):
            j = (offset * n_neg + i) % len(negs.doc_ids)
            doc_ids.append(negs.doc_ids[j])
            scores.append(negs.scores[j])
        return Group(doc_ids, scores)
    doc_ids += negs.doc_ids
    scores += negs.scores
    missing = n_neg - len(negs.doc_ids)
    if corpus is None:
        raise ValueError(
            f"query {example.query_id!r} has {len(negs.doc_ids)} negatives < {n_neg}: a corpus is needed to fill"
        )
    excluded = set(pos.doc_ids) | set(negs.doc_ids)
    if len(corpus) - len(excluded) < missing:
        raise ValueError(f"the corpus has too few passages to fill a group of {n_passages}")
    rng = np.random.default_rng([seed, epoch, _stable_int(example.query_id)])
    while missing:
        doc_id = corpus.doc_id(int(rng.integers(len(corpus))))
        if doc_id in excluded:
            continue
        excluded.add(doc_id)
        doc_ids.append(doc_id)
        scores.append(RANDOM_FILL_SCORE)
        missing -= 1
    return Group(doc_ids, scores, n_random=n_neg - len(negs.doc_ids))
