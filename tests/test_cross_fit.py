"""Cross-fitted KD teachers: K re-rankers on K folds of the training queries; each query is scored by the
one that never trained on it (stage=train_reranker's train_fold + stage=teacher_scores' cross_fit_models)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from simlm.data.folds import TRAINED_QUERIES_FILE, FoldSettings, fold_of, read_trained_queries
from simlm.data.formats import read_examples
from simlm.stages import run_stage
from tests.test_kd import compose_at
from tests.test_reranker import build_tiny_reranker

K = 2


@pytest.fixture(scope="module")
def tiny_reranker(tiny_bert, tmp_path_factory) -> Path:
    return build_tiny_reranker(tiny_bert, tmp_path_factory.mktemp("cross-fit-reranker"))


def test_folds_are_deterministic_balanced_and_independent_of_order():
    ids = [f"q{i}" for i in range(3000)]
    folds = [fold_of(q, 3) for q in ids]
    assert folds == [fold_of(q, 3) for q in reversed(ids)][::-1]
    counts = Counter(folds)
    assert set(counts) == {0, 1, 2} and all(900 < c < 1100 for c in counts.values())


@pytest.mark.parametrize(
    "bad", [{"folds": 1, "exclude": 0}, {"folds": 3, "exclude": 3}, {"folds": 2}, {"k": 2, "exclude": 0}, 2]
)
def test_bad_fold_settings_name_the_key(bad):
    with pytest.raises(ValueError, match="stage.datamodule.train_fold"):
        FoldSettings.parse(bad)


def train_fold(exclude: int, small_beir, train_file, model, out: Path, cache_dir) -> Path:
    run_stage(
        compose_at(
            out,
            cache_dir,
            "stage=train_reranker",
            "data=beir",
            f"data.root={small_beir}",
            f"model.name_or_path={model}",
            f"stage.datamodule.train_file={train_file}",
            "stage.datamodule.max_length=48",
            "stage.train_n_passages=2",
            "stage.module.forward_factor=1",
            "stage.datamodule.batch_size=16",
            "stage.datamodule.val_depth=5",
            "stage.datamodule.val_max_queries=8",
            "stage.final_eval.enabled=false",
            "stage.monitor=null",
            "trainer.max_epochs=1",
            "logger=none",
            f"stage.datamodule.train_fold={{folds: {K}, exclude: {exclude}}}",
        )
    )
    return out / "model"


def teacher(models: list[Path], small_beir, train_file, out: Path, cache_dir) -> Path:
    run_stage(
        compose_at(
            out,
            cache_dir,
            "stage=teacher_scores",
            "data=beir",
            f"data.root={small_beir}",
            f"stage.examples_file={train_file}",
            "stage.num_negatives=3",
            "stage.max_length=48",
            *(
                [f"stage.model={models[0]}"]
                if len(models) == 1
                else [f"stage.cross_fit_models=[{','.join(map(str, models))}]"]
            ),
        )
    )
    return out / "kd_train.jsonl"


@pytest.fixture(scope="module")
def fold_models(small_beir, small_beir_bm25, tiny_reranker, tmp_path_factory, cache_dir) -> list[Path]:
    train_file = small_beir_bm25 / "train.jsonl"
    return [
        train_fold(i, small_beir, train_file, tiny_reranker, tmp_path_factory.mktemp(f"fold{i}"), cache_dir)
        for i in range(K)
    ]


@pytest.mark.timeout(600)
def test_every_query_is_scored_by_a_reranker_that_never_trained_on_it(
    fold_models, small_beir, small_beir_bm25, tmp_path, cache_dir
):
    train_file = small_beir_bm25 / "train.jsonl"
    records = [read_trained_queries(m) for m in fold_models]
    all_queries = {ex.query_id for ex in read_examples(train_file)}
    for i, record in enumerate(records):
        assert record["folds"] == K and record["excluded_fold"] == i
        assert record["query_ids"] and all(fold_of(q, K) != i for q in record["query_ids"])
    assert set().union(*(r["query_ids"] for r in records)) <= all_queries

    crossed = {
        ex.query_id: ex
        for ex in read_examples(teacher(fold_models, small_beir, train_file, tmp_path / "x", cache_dir))
    }
    singles = [
        {
            ex.query_id: ex
            for ex in read_examples(teacher([m], small_beir, train_file, tmp_path / f"s{i}", cache_dir))
        }
        for i, m in enumerate(fold_models)
    ]
    assert set(crossed) == all_queries
    for qid, ex in crossed.items():
        fold = fold_of(qid, K)
        assert qid not in records[fold]["query_ids"]  # its scorer never saw it
        want = singles[fold][qid]  # and the scores are that scorer's
        assert ex.positives.scores == want.positives.scores and ex.negatives.scores == want.negatives.scores
    # the two re-rankers differ, so the check above could fail
    assert any(singles[0][q].negatives.scores != singles[1][q].negatives.scores for q in all_queries)
    metrics = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert metrics["teacher_scores"]["teachers"] == K


def test_misordered_or_unrecorded_models_are_refused(
    fold_models, small_beir, small_beir_bm25, tmp_path, cache_dir, tiny_reranker
):
    train_file = small_beir_bm25 / "train.jsonl"
    with pytest.raises(ValueError, match=r"cross_fit_models\[0\].*must exclude fold 0"):
        teacher(fold_models[::-1], small_beir, train_file, tmp_path / "swapped", cache_dir)
    with pytest.raises(ValueError, match=r"cross_fit_models\[1\].*no record"):
        teacher([fold_models[0], tiny_reranker], small_beir, train_file, tmp_path / "plain", cache_dir)
    assert not (tmp_path / "swapped" / "kd_train.jsonl").exists()
    assert (fold_models[0] / TRAINED_QUERIES_FILE).is_file()
