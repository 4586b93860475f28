"""Training examples with hard negatives from a run, the way SimLM built its data
(`misc/prepare_msmarco_data.py` of the original), or from QA answers (DPR-style).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simlm.data.corpus import Corpus
from simlm.data.formats import Qrels, Run, ScoredDocs, TrainingExample, run_score, write_examples
from simlm.data.io import write_json


@dataclass(frozen=True)
class MiningConfig:
    """How negatives are drawn from a run.

    depth: how many top non-positive candidates of the run are considered (SimLM: 200).
    num_negatives: total negatives per example after the random fill (SimLM: 210).
    min_random: random corpus passages added at least (SimLM: 10), more if the run has too few candidates;
        drawn from outside the whole run and the positives.
    skip_top: ignore the top-r ranks (false-negative control for strong retrievers).
    margin: drop candidates scoring above (best positive's score - margin); None disables it.
    min_positive_grade: qrels grade from which a passage is a positive (>= 1; <= 0 is judged not relevant).
    """

    depth: int = 200
    num_negatives: int = 210
    min_random: int = 10
    skip_top: int = 0
    margin: float | None = None
    min_positive_grade: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        if self.depth < 0 or self.num_negatives < 0 or self.min_random < 0 or self.skip_top < 0:
            raise ValueError("depth, num_negatives, min_random and skip_top must be >= 0")
        if self.min_positive_grade < 1:  # grades <= 0 (e.g. -1) are judged not relevant, never positives
            raise ValueError(f"min_positive_grade must be >= 1, got {self.min_positive_grade}")


def _query_rng(seed: int, qid: str) -> np.random.Generator:
    # per-query generator: the result for a query does not depend on which other queries are mined
    digest = int.from_bytes(hashlib.sha256(qid.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def mine_example(
    qid: str,
    query: str,
    ranking: list[tuple[str, float]],
    judged: dict[str, int],
    corpus: Corpus,
    cfg: MiningConfig,
) -> TrainingExample | None:
    """One training example for `qid`, or None when it has no positive or no candidate."""
    positives = [d for d, g in judged.items() if g >= cfg.min_positive_grade]
    if not positives or not ranking:
        return None
    run_scores = dict(ranking)
    pos_scores = [run_score(run_scores.get(d, -1.0)) for d in positives]
    # SimLM (misc/prepare_msmarco_data.py): remove the positives from the run first, then take the top
    # `depth`, so a positive ranked high does not cost a hard negative; skip_top drops the run's top ranks
    excluded = set(positives)
    negatives = [(d, s) for d, s in ranking[cfg.skip_top :] if d not in excluded][: cfg.depth]
    if cfg.margin is not None:
        retrieved = [run_scores[d] for d in positives if d in run_scores]
        if retrieved:
            ceiling = max(retrieved) - cfg.margin
            negatives = [(d, s) for d, s in negatives if s < ceiling]
    rng = _query_rng(cfg.seed, qid)
    order = rng.permutation(len(negatives))
    n_hard = max(0, cfg.num_negatives - cfg.min_random)
    negatives = [negatives[i] for i in order[:n_hard]]
    # the random fill excludes the whole run (not only the candidates) and the positives, as SimLM
    in_run = {d for d, _ in ranking} | excluded
    n_random = max(cfg.num_negatives - len(negatives), 0)
    available = len(corpus) - len(in_run)
    for doc_id in _random_passages(rng, corpus, in_run, min(n_random, max(available, 0))):
        negatives.append((doc_id, -1.0))
    order = rng.permutation(len(negatives))
    negatives = [(d, run_score(s)) for d, s in (negatives[i] for i in order)]
    return TrainingExample(
        query_id=qid,
        query=query,
        positives=ScoredDocs(positives, pos_scores),
        negatives=ScoredDocs([d for d, _ in negatives], [s for _, s in negatives]),
    )


def _random_passages(rng: np.random.Generator, corpus: Corpus, excluded: set[str], n: int) -> Iterator[str]:
    chosen: set[str] = set()
    while len(chosen) < n:
        doc_id = corpus.doc_id(int(rng.integers(len(corpus))))
        if doc_id in excluded or doc_id in chosen:
            continue
        chosen.add(doc_id)
        yield doc_id


def mine_examples(
    run: Run, qrels: Qrels, queries: dict[str, str], corpus: Corpus, cfg: MiningConfig
) -> tuple[list[TrainingExample], dict[str, int]]:
    """Examples for every judged query (in qrels order) and counts of what was skipped and why."""
    examples: list[TrainingExample] = []
    stats = {"queries": len(qrels), "examples": 0, "skipped_no_positive": 0, "skipped_no_candidates": 0}
    for qid, judged in qrels.items():
        if qid not in queries:
            continue
        ex = mine_example(qid, queries[qid], run.get(qid, []), judged, corpus, cfg)
        if ex is None:
            has_pos = any(g >= cfg.min_positive_grade for g in judged.values())
            stats["skipped_no_positive" if not has_pos else "skipped_no_candidates"] += 1
            continue
        examples.append(ex)
    stats["examples"] = len(examples)
    return examples, stats


def mine_examples_qa(
    run: Run, answers: dict[str, list[str]], queries: dict[str, str], corpus: Corpus, cfg: MiningConfig
) -> tuple[list[TrainingExample], dict[str, int]]:
    """QA data (no qrels): within the top `depth`, passages whose text contains an answer
    (DPR matching) are positives and the others negatives (shuffled, at most `num_negatives`).
    Questions lacking either are dropped."""
    from simlm.evaluation.answers import has_answer

    examples: list[TrainingExample] = []
    stats = {"queries": len(answers), "examples": 0, "skipped_no_positive": 0, "skipped_no_candidates": 0}
    for qid, gold in answers.items():
        ranking = run.get(qid, [])[cfg.skip_top : cfg.depth]
        if qid not in queries or not ranking:
            stats["skipped_no_candidates"] += 1
            continue
        rows = [corpus.row(d) for d, _ in ranking]
        texts = corpus.texts(rows)
        pos = [(d, run_score(s)) for (d, s), t in zip(ranking, texts) if has_answer(t, gold)]
        neg = [(d, run_score(s)) for (d, s), t in zip(ranking, texts) if not has_answer(t, gold)]
        if not pos or not neg:
            stats["skipped_no_positive" if not pos else "skipped_no_candidates"] += 1
            continue
        order = _query_rng(cfg.seed, qid).permutation(len(neg))[: cfg.num_negatives]
        neg = [neg[i] for i in order]
        examples.append(
            TrainingExample(
                qid,
                queries[qid],
                ScoredDocs([d for d, _ in pos], [s for _, s in pos]),
                ScoredDocs([d for d, _ in neg], [s for _, s in neg]),
                answers=list(gold),
            )
        )
    stats["examples"] = len(examples)
    return examples, stats


def mine(
    run: Run,
    queries: dict[str, str],
    corpus: Corpus,
    cfg: MiningConfig,
    *,
    qrels: Qrels | None = None,
    answers: dict[str, list[str]] | None = None,
) -> tuple[list[TrainingExample], dict[str, int]]:
    """The one mining entry: hard negatives from `run` against `answers` (QA data) or `qrels`."""
    if answers is not None:
        return mine_examples_qa(run, answers, queries, corpus, cfg)
    if qrels is None:
        raise ValueError("mining needs qrels or QA answers for the run's queries")
    return mine_examples(run, qrels, queries, corpus, cfg)


def write_mined(
    out_dir: str | Path, split: str, examples: list[TrainingExample], stats: dict[str, int]
) -> Path:
    """Write `<split>.jsonl` and `<split>_mining_stats.json` into `out_dir` (atomically); the examples' path."""
    out_dir = Path(out_dir)
    path = out_dir / f"{split}.jsonl"
    write_examples(path, examples)
    write_json(out_dir / f"{split}_mining_stats.json", stats)
    return path
