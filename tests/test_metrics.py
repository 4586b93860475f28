"""Metric tests against hand-computed values (the arithmetic is written next to each expected number)."""

from __future__ import annotations

import math

import pytest

from simlm.evaluation import (
    SimpleTokenizer,
    answer_accuracy,
    evaluate_run,
    has_answer,
    mrr_at_k,
    parse_answers,
    trec_metrics,
)


def ranked(*doc_ids: str) -> list[tuple[str, float]]:
    """A ranking with strictly decreasing scores, in the given order."""
    return [(d, float(len(doc_ids) - i)) for i, d in enumerate(doc_ids)]


# --------------------------------------------------------------------------------------------------- MRR


def test_mrr_three_query_toy():
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}, "q3": {"e": 1}}
    run = {
        "q1": ranked("a", "b"),  # first relevant at rank 1 -> 1
        "q2": ranked("x", "y", "c"),  # rank 3 -> 1/3
        "q3": ranked("f", "g"),  # none -> 0
    }
    assert mrr_at_k(run, qrels) == pytest.approx((1 + 1 / 3 + 0) / 3)  # = 4/9 = 0.444...


def test_mrr_relevant_at_rank_11_is_outside_top_10():
    qrels = {"q": {"rel": 1}}
    run = {"q": ranked(*[f"n{i}" for i in range(10)], "rel")}  # "rel" is 11th
    assert mrr_at_k(run, qrels, k=10) == 0.0
    assert mrr_at_k(run, qrels, k=11) == pytest.approx(1 / 11)


def test_mrr_trec_dl_graded_threshold_is_2():
    # max grade is 3 -> threshold 2: the grade-1 doc at rank 1 is not relevant, the grade-2 doc at rank 2 is.
    qrels = {"q": {"g1": 1, "g2": 2, "g3": 3}}
    run = {"q": ranked("g1", "g2", "g3")}
    assert mrr_at_k(run, qrels) == pytest.approx(1 / 2)


def test_mrr_binary_threshold_is_1():
    # max grade is 2 (< 3) -> threshold 1: the grade-1 doc at rank 1 counts -> RR 1.
    qrels = {"q": {"g1": 1, "g2": 2}}
    run = {"q": ranked("g1", "g2")}
    assert mrr_at_k(run, qrels) == pytest.approx(1.0)


def test_mrr_uses_list_order_not_scores():
    qrels = {"q": {"a": 1}}
    run = {"q": [("b", 0.1), ("a", 0.9)]}  # list order says b first, even though a scores higher
    assert mrr_at_k(run, qrels) == pytest.approx(1 / 2)


def test_mrr_missing_query_and_unjudged_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ranked("a"), "extra": ranked("b")}  # q2 missing -> 0; "extra" ignored
    assert mrr_at_k(run, qrels) == pytest.approx((1 + 0) / 2)


# ------------------------------------------------------------------------------------------- trec_eval


def test_ndcg_graded_by_hand():
    qrels = {"q": {"a": 3, "b": 2, "c": 1, "d": 0}}
    run = {"q": ranked("d", "c", "a", "x", "b")}
    # DCG = sum grade / log2(rank + 1):  d:0/log2(2) + c:1/log2(3) + a:3/log2(4) + x:0 + b:2/log2(6)
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 3 / math.log2(4) + 0 + 2 / math.log2(6)  # = 2.90464
    # ideal order a, b, c: 3/log2(2) + 2/log2(3) + 1/log2(4)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # = 4.76186
    metrics = trec_metrics(run, qrels)
    assert metrics["ndcg@10"] == pytest.approx(dcg / idcg)  # = 0.60998
    assert metrics["ndcg@10"] == pytest.approx(0.60998, abs=1e-5)
    # relevance level 1 -> relevant: a, b, c, found at ranks 3, 5, 2.
    # AP = (P@2 + P@3 + P@5) / 3 = (1/2 + 2/3 + 3/5) / 3
    assert metrics["map"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)  # = 0.58889


def test_recall_at_k_and_map():
    qrels = {"q": {"a": 1, "b": 1, "c": 1, "d": 1}}
    docs = [f"n{i}" for i in range(100)]
    docs[0], docs[39], docs[59] = "a", "b", "c"  # ranks 1, 40, 60; "d" never retrieved
    metrics = trec_metrics({"q": ranked(*docs)}, qrels)
    assert metrics["recall@50"] == pytest.approx(2 / 4)  # a, b
    assert metrics["recall@100"] == pytest.approx(3 / 4)  # a, b, c
    assert metrics["recall@1000"] == pytest.approx(3 / 4)
    # AP = (1/1 + 2/40 + 3/60 + 0) / 4 = (1 + 0.05 + 0.05) / 4
    assert metrics["map"] == pytest.approx(0.275)


def test_custom_cutoffs_and_keys():
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": ranked("x", "a", "y", "b")}
    metrics = trec_metrics(run, qrels, ndcg_ks=(1, 2), recall_ks=(2,), map_=False)
    assert set(metrics) == {"ndcg@1", "ndcg@2", "recall@2"}
    assert metrics["ndcg@1"] == 0.0  # x is not relevant
    # nDCG@2 = (1/log2(3)) / (1/log2(2) + 1/log2(3)) = 0.63093 / 1.63093
    assert metrics["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))  # = 0.38685
    assert metrics["recall@2"] == pytest.approx(1 / 2)


def test_run_order_honoured_when_scores_tie():
    # trec_eval would break the tie by doc id descending and put "z" first; the run says "a" first.
    qrels = {"q": {"a": 1}}
    run = {"q": [("a", 1.0), ("z", 1.0)]}
    metrics = evaluate_run(run, qrels)
    assert metrics["ndcg@10"] == pytest.approx(1.0)  # rank 1; trec_eval's own tie-break gives 1/log2(3)
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx(1.0)


def test_run_order_honoured_against_increasing_scores():
    qrels = {"q": {"a": 2, "b": 1}}
    run = {"q": [("b", 0.1), ("a", 0.9)]}  # order b, a despite scores
    metrics = trec_metrics(run, qrels)
    # DCG = 1/log2(2) + 2/log2(3); IDCG = 2/log2(2) + 1/log2(3)
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))  # = 2.26186 / 2.63093 = 0.85972
    assert metrics["ndcg@10"] == pytest.approx(expected)
    assert metrics["map"] == pytest.approx((1 / 1 + 2 / 2) / 2)  # both relevant, ranks 1-2 -> 1.0


def test_missing_judged_query_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ranked("a")}  # perfect on q1, q2 absent
    metrics = evaluate_run(run, qrels)
    for key in ("mrr@10", "ndcg@10", "recall@50", "recall@100", "recall@1000", "map"):
        assert metrics[key] == pytest.approx((1.0 + 0.0) / 2), key
    assert metrics["num_queries"] == 2
    # an empty ranking is the same as a missing one
    assert evaluate_run({"q1": ranked("a"), "q2": []}, qrels) == metrics


def test_unjudged_run_queries_ignored():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ranked("a"), "q2": ranked("x", "b")}
    base = evaluate_run(run, qrels)
    assert base["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)  # = 0.75
    with_extra = evaluate_run({**run, "unjudged": ranked("a", "b")}, qrels)
    assert with_extra == base
    assert with_extra["num_queries"] == 2


def test_evaluate_run_keys():
    metrics = evaluate_run({"q": ranked("a")}, {"q": {"a": 1}})
    assert set(metrics) == {
        "mrr@10",
        "ndcg@10",
        "recall@50",
        "recall@100",
        "recall@1000",
        "map",
        "num_queries",
    }


def test_duplicate_doc_keeps_best_rank():
    qrels = {"q": {"a": 1}}
    run = {"q": ranked("x", "a", "y", "a")}
    # "a" counts at its first rank (2): AP = 1/2
    assert trec_metrics(run, qrels)["map"] == pytest.approx(1 / 2)


# -------------------------------------------------------------------------------------- answer matching


def test_tokenizer():
    tokens = SimpleTokenizer().tokenize("Hello, World! It's 3.5km")
    assert tokens == ["hello", ",", "world", "!", "it", "'", "s", "3", ".", "5km"]


def test_has_answer_token_boundaries():
    assert not has_answer("We concatenate strings.", ["cat"])
    assert has_answer("The cat sat on the mat.", ["cat"])
    assert has_answer("the cat.", ["dog", "cat"])  # any answer suffices
    assert not has_answer("the cat.", [])


def test_has_answer_case_and_unicode_normalisation():
    assert has_answer("PARIS is the capital", ["paris"])
    # precomposed "é" (U+00E9) in the answer vs decomposed "e" + U+0301 in the text, and case differs
    assert has_answer("un cafe\u0301 au lait", ["Caf\u00e9"])
    assert has_answer("UN CAF\u00c9 AU LAIT", ["cafe\u0301"])
    # as in DPR, accents are not stripped: "café" is not "cafe"
    assert not has_answer("un café au lait", ["cafe"])


def test_has_answer_multi_token():
    assert has_answer("She moved to New York City in 1990.", ["new york"])
    assert not has_answer("She moved to New York City in 1990.", ["York New"])
    assert not has_answer("New Jersey and York", ["New York"])  # tokens present but not contiguous
    assert has_answer("Born in Washington, D.C. in 1950", ["Washington, D.C."])


def test_has_answer_regex_mode():
    assert has_answer("It landed in 1969.", [r"19[0-9]{2}"], regex=True)
    assert not has_answer("It landed in 1969.", [r"19[0-9]{2}"])  # token mode: no literal match
    assert has_answer("PARIS, France", [r"paris"], regex=True)  # case-insensitive
    assert has_answer("un cafe\u0301", ["caf\u00e9"], regex=True)  # NFD-normalised
    assert not has_answer("a [bad pattern", ["[bad"], regex=True)  # invalid pattern -> no match
    assert has_answer("a [bad pattern", ["[bad", r"pat+ern"], regex=True)  # later good pattern still counts


# ------------------------------------------------------------------------------------- answer_accuracy


def test_answer_accuracy_at_k():
    passages = {
        "p1": "Paris is the capital of France.",
        "p2": "Berlin is in Germany.",
        "p3": "Madrid is in Spain.",
        "p4": "Nothing here.",
        "p5": "Rome is in Italy.",
        "p6": "Also nothing.",
        "p7": "Lisbon, Portugal.",
    }
    calls: list[str] = []

    def passage_text(doc_id: str) -> str:
        calls.append(doc_id)
        return passages[doc_id]

    answers = {"q1": ["Paris"], "q2": ["Madrid"], "q3": ["Lisbon"], "q4": ["Oslo"]}
    run = {
        "q1": ranked("p1", "p2"),  # hit at rank 1
        "q2": ranked("p2", "p4", "p3"),  # hit at rank 3
        "q3": ranked("p2", "p3", "p4", "p5", "p6", "p7"),  # "Lisbon" at rank 6, beyond max k = 5
        # q4 missing from the run -> miss
    }
    acc = answer_accuracy(run, answers, passage_text, ks=(1, 2, 5))
    assert acc == pytest.approx({"acc@1": 1 / 4, "acc@2": 1 / 4, "acc@5": 2 / 4})
    # each passage checked at most once, stopping at the first hit and at rank 5:
    # q1 -> 1 call, q2 -> 3 calls, q3 -> 5 calls, q4 -> 0 calls
    assert calls == ["p1", "p2", "p4", "p3", "p2", "p3", "p4", "p5", "p6"]
    assert answer_accuracy(run, answers, passage_text, ks=(10,)) == pytest.approx({"acc@10": 3 / 4})


def test_answer_accuracy_regex():
    run = {"q": ranked("p1", "p2")}
    texts = {"p1": "no digits", "p2": "year 1969"}
    acc = answer_accuracy(run, {"q": [r"\d{4}"]}, texts.__getitem__, ks=(1, 2), regex=True)
    assert acc == {"acc@1": 0.0, "acc@2": 1.0}


# --------------------------------------------------------------------------------------- parse_answers


def test_parse_answers_json_and_python_literal():
    assert parse_answers('["Paris", "Paris, France"]', "nq-test.csv", 3) == ["Paris", "Paris, France"]
    assert parse_answers("['Nixon', \"O'Brien\"]", "trivia.csv", 7) == ["Nixon", "O'Brien"]
    assert parse_answers("[]", "x.csv", 1) == []


@pytest.mark.parametrize(
    "field",
    [
        "__import__('os').system('echo pwned')",
        "[__import__('os')]",
        '"just a string"',
        "'just a string'",
        "[1, 2]",
        "{'a': 'b'}",
        "not a list at all",
    ],
)
def test_parse_answers_rejects(field):
    with pytest.raises(ValueError) as excinfo:
        parse_answers(field, "data/qa.csv", 42)
    message = str(excinfo.value)
    assert "data/qa.csv" in message
    assert "42" in message
    assert "answers" in message
