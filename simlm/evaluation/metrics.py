"""Retrieval metrics: MS MARCO MRR@k, trec_eval measures (via pytrec_eval) and DPR top-k answer accuracy.

Conventions shared by every function here:

* A run lists each query's documents best first; that order is authoritative (ties in score were already
  broken upstream), no function re-sorts by score.
* Averages are taken over all judged queries (the keys of the qrels, or of the answers for QA). A judged
  query absent from the run, or with an empty ranking, scores 0 on every metric. Run queries without
  judgements are ignored (:func:`check_run_coverage` refuses a run that shares no query with them).
* Grades are integers. A grade <= 0 is "judged not relevant": the query still counts as judged, the
  document is never relevant (gain 0 for nDCG, not counted by recall, MAP or MRR). Negative grades
  (e.g. -1, as several classic collections use) are treated exactly as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from operator import itemgetter

import pytrec_eval

from simlm.evaluation.answers import has_answer

__all__ = [
    "PerQuery",
    "Qrels",
    "Run",
    "answer_accuracy",
    "answer_hits",
    "check_run_coverage",
    "evaluate_run",
    "means",
    "mrr_at_k",
    "mrr_threshold",
    "per_query_metrics",
    "reciprocal_ranks",
    "trec_metrics",
    "trec_per_query",
]

PerQuery = dict[str, dict[str, float]]
"""metric -> {qid: the query's value}, for every judged query (0 where the run has no ranking)."""

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
"""qid -> {doc_id: relevance grade}."""

Run = dict[str, list[tuple[str, float]]]
"""qid -> [(doc_id, score), ...] ranked best first."""


def mrr_threshold(qrels: Qrels, setting: int | None = None) -> int:
    """The grade from which a document counts as relevant for MRR.

    ``setting`` (the data set's ``data.mrr_threshold``) when given, else the MS MARCO / SimLM rule: 2 when
    the largest grade in ``qrels`` is >= 3 (TREC DL, graded 0..3), else 1.
    """
    if setting is not None:
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ValueError(f"data.mrr_threshold must be an integer >= 1 or null, got {setting!r}")
        return setting
    max_grade = max((grade for judged in qrels.values() for grade in judged.values()), default=0)
    return 2 if max_grade >= 3 else 1


def means(per_query: PerQuery) -> dict[str, float]:
    """Each metric averaged over its queries (every judged one, see `PerQuery`); 0 without queries."""
    return {key: sum(values.values()) / len(values) if values else 0.0 for key, values in per_query.items()}


def reciprocal_ranks(run: Run, qrels: Qrels, k: int = 10, threshold: int | None = None) -> dict[str, float]:
    """Each judged query's reciprocal rank of its first relevant document within the run's top ``k``
    (0 if none), relevance and ranking as in :func:`mrr_at_k`."""
    threshold = mrr_threshold(qrels, threshold)
    ranks = dict.fromkeys(qrels, 0.0)
    for qid, judged in qrels.items():
        for rank, (doc_id, _score) in enumerate(run.get(qid, ())[:k], start=1):
            if judged.get(doc_id, 0) >= threshold:
                ranks[qid] = 1.0 / rank
                break
    return ranks


def mrr_at_k(run: Run, qrels: Qrels, k: int = 10, threshold: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant document within each query's top ``k``, as a fraction.

    Follows the MS MARCO / SimLM definition: a document is relevant when its grade is >= ``threshold``
    (default: :func:`mrr_threshold`, i.e. 2 if the largest grade in ``qrels`` is >= 3, else 1). The run's
    list order is used as the ranking. The mean is over all queries in ``qrels``; a query missing from
    the run contributes 0.
    """
    if not qrels:
        return 0.0
    return sum(reciprocal_ranks(run, qrels, k, threshold).values()) / len(qrels)


def _rank_scores(ranking: list[tuple[str, float]], cache: dict[int, list[float]]) -> dict[str, float]:
    """Map doc ids to strictly decreasing rank-derived scores; a repeated doc keeps its best rank.

    ``cache`` holds the score lists ``[n, n - 1, ..., 1]`` by length, shared across queries (a run usually
    has one or few list lengths), which makes building the dicts several times faster than per-doc floats.
    """
    n = len(ranking)
    scores = cache.get(n)
    if scores is None:
        scores = cache[n] = [float(n - rank) for rank in range(n)]
    by_doc = dict(zip(map(itemgetter(0), ranking), scores))
    if len(by_doc) != n:  # duplicates: zip kept the last (worst) occurrence, keep the first instead
        by_doc = {}
        for (doc_id, _score), score in zip(ranking, scores):
            by_doc.setdefault(doc_id, score)
    return by_doc


def trec_per_query(
    run: Run,
    qrels: Qrels,
    ndcg_ks: Sequence[int] = (10,),
    recall_ks: Sequence[int] = (50, 100, 1000),
    map_: bool = True,
) -> PerQuery:
    """nDCG@k, recall@k and MAP of every judged query, computed by trec_eval (pytrec_eval, relevance
    level 1); :func:`trec_metrics` averages them.

    trec_eval re-sorts each ranking by score (breaking ties by doc id), so the run's scores are replaced by
    rank-derived ones (``len(ranking) - rank``) to make it honour the run's order. nDCG uses the grade as
    gain. A judged query absent from the run (or with an empty ranking, or without judged documents)
    has 0 for every metric; run queries absent from ``qrels`` are ignored.
    """
    names: dict[str, str] = {}  # pytrec_eval key -> our key
    measures: set[str] = set()
    if ndcg_ks:
        measures.add("ndcg_cut." + ",".join(str(k) for k in ndcg_ks))
        names.update({f"ndcg_cut_{k}": f"ndcg@{k}" for k in ndcg_ks})
    if recall_ks:
        measures.add("recall." + ",".join(str(k) for k in recall_ks))
        names.update({f"recall_{k}": f"recall@{k}" for k in recall_ks})
    if map_:
        measures.add("map")
        names["map"] = "map"
    per_query = {key: dict.fromkeys(qrels, 0.0) for key in names.values()}
    if not names or not qrels:
        return per_query

    judged_qrels = {qid: judged for qid, judged in qrels.items() if judged}
    if any(grade < 0 for judged in judged_qrels.values() for grade in judged.values()):
        # judged not relevant: gain 0 (trec_eval would otherwise be free to use a negative gain)
        judged_qrels = {q: {d: max(g, 0) for d, g in j.items()} for q, j in judged_qrels.items()}
    score_cache: dict[int, list[float]] = {}
    trec_run = {qid: _rank_scores(run[qid], score_cache) for qid in judged_qrels if run.get(qid)}
    if trec_run:
        evaluator = pytrec_eval.RelevanceEvaluator(judged_qrels, measures)
        for qid, values in evaluator.evaluate(trec_run).items():
            for trec_name, key in names.items():
                per_query[key][qid] = values[trec_name]
    return per_query


def trec_metrics(
    run: Run,
    qrels: Qrels,
    ndcg_ks: Sequence[int] = (10,),
    recall_ks: Sequence[int] = (50, 100, 1000),
    map_: bool = True,
) -> dict[str, float]:
    """nDCG@k, recall@k and MAP (:func:`trec_per_query`), each averaged over all queries in ``qrels``.

    Returns:
        ``{"ndcg@10": ..., "recall@50": ..., "recall@100": ..., "recall@1000": ..., "map": ...}`` for the
        default arguments (fractions in [0, 1]).
    """
    per_query = trec_per_query(run, qrels, ndcg_ks, recall_ks, map_)
    return means(per_query)


def per_query_metrics(
    run: Run,
    qrels: Qrels,
    mrr_k: int = 10,
    ndcg_ks: Sequence[int] = (10,),
    recall_ks: Sequence[int] = (50, 100, 1000),
    map_: bool = True,
    mrr_threshold: int | None = None,
) -> PerQuery:
    """Every :func:`evaluate_run` metric of every judged query (what paired significance tests need)."""
    per_query: PerQuery = {f"mrr@{mrr_k}": reciprocal_ranks(run, qrels, k=mrr_k, threshold=mrr_threshold)}
    per_query.update(trec_per_query(run, qrels, ndcg_ks=ndcg_ks, recall_ks=recall_ks, map_=map_))
    return per_query


def evaluate_run(
    run: Run,
    qrels: Qrels,
    mrr_k: int = 10,
    ndcg_ks: Sequence[int] = (10,),
    recall_ks: Sequence[int] = (50, 100, 1000),
    map_: bool = True,
    mrr_threshold: int | None = None,
) -> dict[str, float]:
    """All ranking metrics for ``run``: ``mrr@{mrr_k}`` (see :func:`mrr_at_k`, relevance from grade
    ``mrr_threshold``, default the MS MARCO rule), the :func:`trec_metrics` keys, and ``num_queries``
    (the number of judged queries every metric is averaged over)."""
    per_query = per_query_metrics(run, qrels, mrr_k, ndcg_ks, recall_ks, map_, mrr_threshold)
    metrics = means(per_query)
    metrics["num_queries"] = len(qrels)
    return metrics


def check_run_coverage(run: Run, judged: Collection[str], run_name: str, split: str) -> None:
    """Refuse a run that shares no query with the judged queries of ``split``; warn below half coverage.

    Metrics average over the judged queries, so a run of another split (or with other query ids) would
    otherwise score an all-zero table.
    """
    if not judged:
        return
    covered = sum(1 for qid in judged if qid in run)
    if covered == 0:
        example_run = ", ".join(repr(q) for q in list(run)[:3]) or "none"
        example_judged = ", ".join(repr(q) for q in list(judged)[:3])
        raise ValueError(
            f"{run_name}: none of its {len(run)} query ids is judged in split '{split}' "
            f"({len(judged)} judged queries; run ids e.g. {example_run}, judged ids e.g. {example_judged}): "
            "is it a run of another split or data set?"
        )
    if covered * 2 < len(judged):
        log.warning(
            "%s covers only %d of the %d judged queries of split '%s' (the others count 0 in every metric)",
            run_name,
            covered,
            len(judged),
            split,
        )


def answer_hits(
    run: Run,
    answers: dict[str, list[str]],
    passage_text: Callable[[str], str],
    ks: Sequence[int] = (1, 5, 20, 100),
    regex: bool = False,
) -> PerQuery:
    """Per question, ``acc@k`` = 1.0 if some passage among the run's top ``k`` contains an answer (see
    :func:`answer_accuracy`), else 0.0."""
    ks = list(ks)
    hits: PerQuery = {f"acc@{k}": dict.fromkeys(answers, 0.0) for k in ks}
    depth = max(ks, default=0)
    for qid, gold in answers.items():
        for rank, (doc_id, _score) in enumerate(run.get(qid, ())[:depth]):
            if has_answer(passage_text(doc_id), gold, regex=regex):
                for k in ks:
                    if rank < k:
                        hits[f"acc@{k}"][qid] = 1.0
                break
    return hits


def answer_accuracy(
    run: Run,
    answers: dict[str, list[str]],
    passage_text: Callable[[str], str],
    ks: Sequence[int] = (1, 5, 20, 100),
    regex: bool = False,
) -> dict[str, float]:
    """DPR-style top-k retrieval accuracy for open-domain QA.

    ``acc@k`` is the fraction of questions (all qids in ``answers``) for which some passage among the run's
    top ``k`` contains an answer according to :func:`~simlm.evaluation.answers.has_answer`. Each passage is
    fetched with ``passage_text(doc_id)`` and checked at most once per question, stopping at the first hit
    (and at rank ``max(ks)``). Questions missing from the run count as misses.
    """
    hits = answer_hits(run, answers, passage_text, ks, regex)
    return means(hits)
