"""Hard-negative construction from a run (SimLM spec 7.4) and the false-negative controls."""

from __future__ import annotations

import pytest

from simlm.data.corpus import Corpus, Passage
from simlm.retrieval.mining import MiningConfig, mine_example, mine_examples


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus.from_passages(Passage(f"d{i}", "", f"text {i}") for i in range(1000))


def ranking(n: int, start: int = 0) -> list[tuple[str, float]]:
    return [(f"d{start + i}", float(1000 - i)) for i in range(n)]


def test_simlm_rule_top200_minus_positives_plus_random_fill(corpus):
    run = ranking(300)  # d0..d299; positives d5 (rank 6) and d250 (beyond depth)
    ex = mine_example("q", "query", run, {"d5": 1, "d250": 1, "d7": 0}, corpus, MiningConfig())
    negs = ex.negatives.doc_ids
    assert len(negs) == 210 and len(set(negs)) == 210
    assert not {"d5", "d250"} & set(negs)
    hard = [d for d in negs if int(d[1:]) < 300]
    random_fill = [d for d in negs if int(d[1:]) >= 300]
    # SimLM removes the positives first, then takes the top 200: d0..d200 without d5 -> 200 hard negatives
    # (all kept: 210 - 10 random at most), then 10 random
    assert len(hard) == 200 and len(random_fill) == 10
    assert set(hard) == {f"d{i}" for i in range(201)} - {"d5"}
    # random passages come from outside the whole run (d0..d299) and carry score -1; d7 is judged 0, so a
    # negative
    assert all(s == -1.0 for d, s in zip(negs, ex.negatives.scores) if d in random_fill)
    assert all(s != -1.0 for d, s in zip(negs, ex.negatives.scores) if d in hard)
    assert "d7" in negs
    assert ex.positives.doc_ids == ["d5", "d250"] and ex.positives.scores == [995.0, 750.0]
    # shuffled: not in run order
    assert hard != sorted(hard, key=lambda d: int(d[1:]))


def test_at_most_num_negatives_minus_min_random_hard_negatives(corpus):
    ex = mine_example("q", "query", ranking(600), {"d599": 1}, corpus, MiningConfig(depth=500))
    hard = [d for d, s in zip(ex.negatives.doc_ids, ex.negatives.scores) if s != -1.0]
    assert len(hard) == 200 and len(ex.negatives.doc_ids) == 210


def test_short_runs_are_filled_with_random_passages(corpus):
    ex = mine_example("q", "query", ranking(20), {"d0": 1}, corpus, MiningConfig())
    assert len(ex.negatives.doc_ids) == 210
    assert sum(s == -1.0 for s in ex.negatives.scores) == 210 - 19


def test_seeded_and_per_query(corpus):
    cfg = MiningConfig(seed=1)
    a = mine_example("q", "query", ranking(300), {"d0": 1}, corpus, cfg)
    b = mine_example("q", "query", ranking(300), {"d0": 1}, corpus, cfg)
    c = mine_example("q", "query", ranking(300), {"d0": 1}, corpus, MiningConfig(seed=2))
    assert a == b and a.negatives.doc_ids != c.negatives.doc_ids
    # a query's example does not depend on the other queries mined with it
    run = {"q": ranking(300), "r": ranking(300, start=300)}
    both, _ = mine_examples(run, {"r": {"d300": 1}, "q": {"d0": 1}}, {"q": "x", "r": "y"}, corpus, cfg)
    assert both[1].negatives == a.negatives


def test_skip_top_and_margin(corpus):
    run = ranking(300)
    ex = mine_example("q", "query", run, {"d3": 1}, corpus, MiningConfig(skip_top=10))
    assert not {f"d{i}" for i in range(10)} & set(ex.negatives.doc_ids)
    # positive d3 scores 997: margin 5 drops every candidate scoring >= 992 (d0..d8 except d3)
    ex = mine_example("q", "query", run, {"d3": 1}, corpus, MiningConfig(margin=5.0))
    kept = set(ex.negatives.doc_ids)
    assert not {f"d{i}" for i in range(9)} & kept and "d9" in kept


def test_queries_without_positive_or_candidates_are_skipped(corpus):
    run = {"a": ranking(5), "b": []}
    examples, stats = mine_examples(
        run, {"a": {"d1": 0}, "b": {"d1": 1}}, {"a": "x", "b": "y"}, corpus, MiningConfig()
    )
    assert examples == []
    assert stats["skipped_no_positive"] == 1 and stats["skipped_no_candidates"] == 1


def test_bad_config():
    with pytest.raises(ValueError):
        MiningConfig(depth=-1)


def test_random_fill_excludes_the_whole_run_and_positives_do_not_cost_hard_negatives(corpus):
    # a run deeper than `depth`: d0..d989; positives d0 and d1 at the top; only d990..d999 are outside it
    ex = mine_example("q", "query", ranking(990), {"d0": 1, "d1": 2}, corpus, MiningConfig())
    scores = dict(zip(ex.negatives.doc_ids, ex.negatives.scores))
    hard = {d for d, s in scores.items() if s != -1.0}
    assert hard == {f"d{i}" for i in range(2, 202)}
    assert {d for d, s in scores.items() if s == -1.0} == {f"d{i}" for i in range(990, 1000)}
    # skip_top drops the run's top ranks; the next non-positive candidates take their place
    ex = mine_example("q", "query", ranking(990), {"d3": 1}, corpus, MiningConfig(skip_top=5))
    assert {d for d, s in zip(ex.negatives.doc_ids, ex.negatives.scores) if s != -1.0} == {
        f"d{i}" for i in range(5, 205)
    }
