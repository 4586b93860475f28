"""Paired significance of one run against another: the tests against brute force, per-query metrics
against the averaged ones, and `stage=evaluate stage.baseline_run_file=...` end to end."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from simlm.data.formats import read_beir_qrels, read_run, write_run
from simlm.evaluation import evaluate_run, paired_comparison
from simlm.evaluation.metrics import answer_accuracy, answer_hits, per_query_metrics
from simlm.stages import run_stage
from simlm.stages.params import ParamError


def as_queries(values) -> dict[str, float]:
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def exact_sign_flip_p(diff: np.ndarray) -> float:
    """Every one of the 2^n sign patterns, equally likely: P(|mean| >= observed)."""
    observed = abs(diff.mean())
    flips = [
        abs((np.array(signs) * diff).mean()) >= observed - 1e-12
        for signs in itertools.product((-1, 1), repeat=len(diff))
    ]
    return float(np.mean(flips))


def exact_bootstrap_means(diff: np.ndarray) -> np.ndarray:
    """The mean of every one of the n^n equally likely resamples with replacement."""
    return np.array(
        [diff[list(picks)].mean() for picks in itertools.product(range(len(diff)), repeat=len(diff))]
    )


def test_randomisation_p_value_matches_the_exact_enumeration():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, 10)
    b = a - rng.normal(0.08, 0.15, 10)
    exact = exact_sign_flip_p(a - b)
    result = paired_comparison(as_queries(a), as_queries(b), resamples=40_000, seed=1)
    assert 0.01 < exact < 0.9  # neither trivial end
    assert result.p_value == pytest.approx(exact, abs=0.01)
    assert result.difference == pytest.approx((a - b).mean())
    assert result.mean_a == pytest.approx(a.mean()) and result.mean_b == pytest.approx(b.mean())


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    a = np.array([1.0, 0.5, 0.0, 0.8, 0.3, 1.0])
    b = np.array([0.2, 0.5, 0.1, 0.4, 0.6, 0.7])
    means = exact_bootstrap_means(a - b)  # 6^6 = 46,656 resamples
    low, high = np.quantile(means, [0.025, 0.975])
    result = paired_comparison(as_queries(a), as_queries(b), resamples=40_000, seed=2)
    assert result.ci_low == pytest.approx(low, abs=0.02) and result.ci_high == pytest.approx(high, abs=0.02)
    assert result.ci_low < result.difference < result.ci_high
    narrow = paired_comparison(as_queries(a), as_queries(b), resamples=40_000, seed=2, confidence=0.5)
    assert result.ci_low < narrow.ci_low < narrow.ci_high < result.ci_high


def test_identical_runs_and_a_uniform_gain():
    same = as_queries([0.1, 0.9, 0.4, 0.0])
    result = paired_comparison(same, dict(same), resamples=500)
    assert (result.difference, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert result.better == result.worse == 0 and result.queries == 4
    # every query +0.5: the interval is the point, and only the observed signs are as extreme
    base = as_queries(np.linspace(0, 0.5, 20))
    better = {q: v + 0.5 for q, v in base.items()}
    result = paired_comparison(better, base, resamples=2_000)
    assert result.ci_low == pytest.approx(0.5) and result.ci_high == pytest.approx(0.5)
    assert result.p_value < 0.002 and (result.better, result.worse) == (20, 0)


def test_swapping_the_runs_flips_the_difference_and_keeps_the_p_value():
    rng = np.random.default_rng(0)
    a, b = as_queries(rng.uniform(size=30)), as_queries(rng.uniform(size=30))
    ab, ba = paired_comparison(a, b, seed=5), paired_comparison(b, a, seed=5)
    assert ab.difference == pytest.approx(-ba.difference)
    assert ab.p_value == ba.p_value and ab.ci_low == pytest.approx(-ba.ci_high)
    assert (ab.better, ab.worse) == (ba.worse, ba.better)
    assert paired_comparison(a, b, seed=5) == ab  # seeded: reproducible


@pytest.mark.parametrize(
    "a, b, kwargs, message",
    [
        ({"q1": 1.0}, {"q2": 1.0}, {}, "same queries"),
        ({}, {}, {}, "at least one query"),
        ({"q1": 1.0}, {"q1": 0.0}, {"resamples": 0}, "resamples"),
        ({"q1": 1.0}, {"q1": 0.0}, {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_comparisons_are_refused(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(a, b, **kwargs)


def random_run_and_qrels(seed: int):
    rnd = random.Random(seed)
    docs = [f"d{i}" for i in range(40)]
    qrels = {
        f"q{i}": {d: rnd.choice([1, 2, 3]) for d in rnd.sample(docs, rnd.randint(1, 4))} for i in range(25)
    }
    qrels["q_empty"] = {}
    run = {q: [(d, float(40 - r)) for r, d in enumerate(rnd.sample(docs, 30))] for q in list(qrels)[:20]}
    return run, qrels


def test_per_query_metrics_average_to_the_reported_metrics():
    run, qrels = random_run_and_qrels(7)
    per_query = per_query_metrics(run, qrels)
    metrics = evaluate_run(run, qrels)
    assert set(per_query) == set(metrics) - {"num_queries"}
    for name, values in per_query.items():
        assert set(values) == set(qrels)  # every judged query, a missing one as 0
        assert sum(values.values()) / len(qrels) == pytest.approx(metrics[name], abs=1e-12)
    assert all(per_query[name]["q24"] == 0.0 for name in per_query)  # judged, not in the run
    answers = {"q1": ["paris"], "q2": ["berlin"], "q3": ["rome"]}
    text = {"d1": "paris is in france", "d2": "berlin", "d3": "nothing"}
    answer_run = {"q1": [("d3", 2.0), ("d1", 1.0)], "q2": [("d2", 1.0)]}
    hits = answer_hits(answer_run, answers, text.__getitem__, ks=(1, 5))
    assert hits == {"acc@1": {"q1": 0.0, "q2": 1.0, "q3": 0.0}, "acc@5": {"q1": 1.0, "q2": 1.0, "q3": 0.0}}
    assert answer_accuracy(answer_run, answers, text.__getitem__, ks=(1, 5)) == {
        "acc@1": 1 / 3,
        "acc@5": 2 / 3,
    }


def test_evaluate_stage_compares_a_run_with_a_baseline(compose, tmp_path, demo_root):
    bm25 = compose("stage=bm25", "data=demo", "stage.negatives.enabled=false", output_dir=tmp_path / "bm25")
    run_stage(bm25)
    run = read_run(tmp_path / "bm25" / "test.trec")
    qrels = read_beir_qrels(demo_root / "qrels" / "test.tsv")
    # a worse baseline: a query whose first document is relevant gets it at the end instead
    worse = {
        q: ranking[1:] + ranking[:1] if qrels.get(q, {}).get(ranking[0][0], 0) > 0 else ranking
        for q, ranking in run.items()
    }
    write_run(tmp_path / "worse.trec", worse, "trec")
    cfg = compose(
        "stage=evaluate",
        "data=demo",
        f"stage.run_file={tmp_path / 'bm25' / 'test.trec'}",
        f"stage.baseline_run_file={tmp_path / 'worse.trec'}",
        "stage.resamples=2000",
        output_dir=tmp_path / "cmp",
    )
    run_stage(cfg)
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    expected = json.loads((tmp_path / "bm25" / "metrics.json").read_text())["test"]
    assert metrics["test"] == expected
    comparison = metrics["comparison"]
    assert comparison["split"] == "test" and set(comparison) >= {"ndcg@10", "mrr@10"}
    for name in ("ndcg@10", "mrr@10"):
        block = comparison[name]
        assert block["mean_a"] == pytest.approx(expected[name])
        assert block["mean_b"] == pytest.approx(metrics["test_baseline"][name])
        assert block["difference"] > 0 and block["p_value"] < 0.01 and block["ci_low"] > 0
        assert block["queries"] == expected["num_queries"] and block["worse"] == 0
    # a metric the split does not have, and a bad confidence: refused, nothing written
    bad = compose(*cfg_overrides(tmp_path), "stage.compare_metrics=[acc@20]", output_dir=tmp_path / "bad")
    with pytest.raises(ValueError, match="acc@20"):
        run_stage(bad)
    bad = compose(*cfg_overrides(tmp_path), "stage.confidence=1", output_dir=tmp_path / "bad2")
    with pytest.raises(ParamError, match="stage.confidence"):
        run_stage(bad)
    assert (
        not (tmp_path / "bad" / "metrics.json").exists() and not (tmp_path / "bad2" / "metrics.json").exists()
    )


def cfg_overrides(tmp_path) -> list[str]:
    return [
        "stage=evaluate",
        "data=demo",
        f"stage.run_file={tmp_path / 'bm25' / 'test.trec'}",
        f"stage.baseline_run_file={tmp_path / 'worse.trec'}",
    ]


def test_evaluate_stage_compares_qa_runs_by_answer_accuracy(compose, tmp_path):
    from tests.test_mine_stage import make_qa_dir

    root = make_qa_dir(tmp_path / "qa")
    good = {
        "what is the capital of france": [("0", 3.0), ("3", 2.0)],
        "what is the capital of germany": [("1", 3.0)],
    }
    bad = {q: [("1", 1.0)] for q in good}
    write_run(tmp_path / "good.msmarco.txt", good, "msmarco")  # query ids with spaces: tab-separated
    write_run(tmp_path / "bad.msmarco.txt", bad, "msmarco")
    cfg = compose(
        "stage=evaluate",
        "data=msmarco",
        f"data.root={root}",
        "data.task=qa",
        "data.eval_split=train",
        f"stage.run_file={tmp_path / 'good.msmarco.txt'}",
        f"stage.baseline_run_file={tmp_path / 'bad.msmarco.txt'}",
        "stage.resamples=500",
        output_dir=tmp_path / "eval",
    )
    run_stage(cfg)
    comparison = json.loads((tmp_path / "eval" / "metrics.json").read_text())["comparison"]
    assert {k for k in comparison if k.startswith("acc@")} == {"acc@20", "acc@100"}  # QA's default metrics
    assert comparison["acc@20"]["difference"] == pytest.approx(0.5)  # france found by one run only
    assert (comparison["acc@20"]["better"], comparison["acc@20"]["worse"]) == (1, 0)
