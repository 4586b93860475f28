"""Re-ranking that never hurts: the final score interpolates the re-ranker's and the first stage's,
with the weight chosen on validation (0 allowed); a re-ranker worse than the first stage gets weight 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_run
from simlm.retrieval.rerank import (
    WEIGHTS,
    interpolated_rerank,
    merge_reranked,
    normalize_scores,
    select_weight,
)
from simlm.stages import run_stage
from simlm.stages.params import ParamError

# ------------------------------------------------------------------------------------ pure functions


def test_normalize_scores_zscore_and_minmax():
    z = normalize_scores([1.0, 2.0, 3.0], "zscore")
    assert z == pytest.approx([-(1.5**0.5), 0.0, 1.5**0.5])  # mean 0, population sd 1
    assert normalize_scores([1.0, 2.0, 5.0], "minmax") == pytest.approx([0.0, 0.25, 1.0])
    for how in ("zscore", "minmax"):
        assert normalize_scores([4.0, 4.0], how).tolist() == [0.0, 0.0]  # no order: no say
        assert normalize_scores([], how).size == 0
    with pytest.raises(ValueError, match="normalization"):
        normalize_scores([1.0], "rank")


RUN = {
    "q1": [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 0.5)],
    "q2": [("x", 1.0), ("y", 0.0)],
}
CE = {"q1": {"a": 0.0, "b": 10.0, "c": 5.0}, "q2": {"x": -1.0, "y": 1.0}}


def brute_force(run, ce, depth, w):
    """Each query's top `depth` by w * z(ce) + (1 - w) * z(first stage), ties by doc id; then the rest."""
    out = {}
    for qid, ranking in run.items():
        head = ranking[:depth]
        first = np.array([s for _, s in head])
        second = np.array([ce[qid][d] for d, _ in head])
        fused = w * (second - second.mean()) / second.std() + (1 - w) * (first - first.mean()) / first.std()
        order = sorted(range(len(head)), key=lambda i: (-fused[i], head[i][0]))
        out[qid] = [head[i][0] for i in order] + [d for d, _ in ranking[depth:]]
    return out


@pytest.mark.parametrize("w", [0.1, 0.5, 0.9])
def test_interpolated_order_is_the_weighted_sum_of_normalised_scores(w):
    got = interpolated_rerank(RUN, CE, depth=3, weight=w)
    assert {q: [d for d, _ in r] for q, r in got.items()} == brute_force(RUN, CE, 3, w)
    scores = [s for _, s in got["q1"]]
    assert scores == sorted(scores, reverse=True)  # the written scores sort into the written order


def test_weight_0_is_the_first_stage_and_weight_1_the_re_ranker_alone():
    assert interpolated_rerank(RUN, CE, depth=3, weight=0.0) == RUN  # unchanged, scores included
    assert interpolated_rerank(RUN, CE, depth=3, weight=1.0) == merge_reranked(RUN, CE, 3)
    with pytest.raises(ValueError, match="from 0 to 1"):
        interpolated_rerank(RUN, CE, depth=3, weight=1.5)


def test_select_weight_maximises_and_breaks_ties_towards_the_first_stage():
    assert [round(w, 1) for w in WEIGHTS] == [i / 10 for i in range(11)]
    weight, grid = select_weight(lambda w: 0.5)
    assert weight == 0.0 and list(grid) == list(WEIGHTS)  # no gain anywhere: the first stage
    assert select_weight(lambda w: -((w - 0.3) ** 2))[0] == pytest.approx(0.3)
    assert select_weight(lambda w: 1.0 if w in (0.2, 0.6) else 0.0)[0] == 0.2
    assert select_weight(lambda w: 0.4 + 1e-12 * w)[0] == 0.0  # float noise is a tie
    assert select_weight(lambda w: 0.4 - w)[0] == 0.0


# ------------------------------------------------------------------------------------ stage=rerank


def fake_scorer(small_beir, sign: float):
    """A stand-in for the cross-encoder: +sign for judged relevant (query, passage) pairs, 0 otherwise.

    sign=+1 is an oracle, sign=-1 a re-ranker that pushes every relevant passage to the bottom.
    """
    data = RetrievalData(small_beir, layout="beir")
    relevant: dict[str, set[str]] = {}
    for split in ("dev", "test"):
        for qid, judged in data.qrels(split).items():
            text = data.queries(split)[qid]
            relevant.setdefault(text, set()).update(d for d, g in judged.items() if g >= 1)
    calls = []

    def load_and_score(model, corpus, pairs, runtime, **kwargs):
        calls.append(len(pairs))
        return np.array([sign * (d in relevant.get(q, ())) for q, d in pairs], dtype=np.float32), 0.1

    return load_and_score, calls


def rerank_overrides(small_beir, small_beir_bm25, tiny_bert, *extra):
    return (
        "stage=rerank",
        "data=beir",
        f"data.root={small_beir}",
        f"stage.model={tiny_bert}",
        f"stage.run_file={small_beir_bm25 / 'test.trec'}",
        f"stage.val_run_file={small_beir_bm25 / 'dev.trec'}",
        "stage.depth=20",
        *extra,
    )


def test_a_re_ranker_worse_than_the_first_stage_gets_weight_0_and_changes_nothing(
    compose, tmp_path, monkeypatch, small_beir, small_beir_bm25, tiny_bert
):
    scorer, calls = fake_scorer(small_beir, sign=-1.0)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score", scorer)
    out = tmp_path / "rerank"
    run_stage(compose(*rerank_overrides(small_beir, small_beir_bm25, tiny_bert), output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["interpolation"]
    assert block["weight"] == 0.0 and block["validation_split"] == "dev" and block["metric"] == "ndcg@10"
    grid = block["grid"]
    assert list(grid) == [f"{w:.1f}" for w in WEIGHTS]
    assert all(v < grid["0.0"] for w, v in grid.items() if w != "0.0")  # every weight > 0 hurts
    assert len(calls) == 1  # one model load scores the test and the validation pairs
    # the re-ranked runs are the first stage's, on both splits
    assert read_run(out / "test.trec") == read_run(small_beir_bm25 / "test.trec")
    assert read_run(out / "dev.trec") == read_run(small_beir_bm25 / "dev.trec")
    assert metrics["test"]["ndcg@10"] == pytest.approx(metrics["test_input"]["ndcg@10"])
    assert metrics["dev"]["ndcg@10"] == pytest.approx(grid["0.0"], abs=1e-6)
    # the same re-ranker alone, as before this release (stage.interpolation=1), lowers the run
    fixed = tmp_path / "fixed"
    run_stage(
        compose(
            *rerank_overrides(small_beir, small_beir_bm25, tiny_bert, "stage.interpolation=1"),
            output_dir=fixed,
        )
    )
    alone = json.loads((fixed / "metrics.json").read_text())
    assert alone["test"]["ndcg@10"] < alone["test_input"]["ndcg@10"]
    assert alone["interpolation"] == {
        "weight": 1.0,
        "chosen_by": "stage.interpolation",
        "normalize": "zscore",
    }
    assert "dev" not in alone  # a fixed weight needs no validation run


def test_a_re_ranker_better_than_the_first_stage_gets_a_weight_that_helps(
    compose, tmp_path, monkeypatch, small_beir, small_beir_bm25, tiny_bert
):
    scorer, _ = fake_scorer(small_beir, sign=1.0)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score", scorer)
    out = tmp_path / "rerank"
    run_stage(
        compose(
            *rerank_overrides(small_beir, small_beir_bm25, tiny_bert, "stage.normalize=minmax"),
            output_dir=out,
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    weight, grid = metrics["interpolation"]["weight"], metrics["interpolation"]["grid"]
    assert weight > 0.0 and grid[f"{weight:.1f}"] == max(grid.values())
    assert all(v < grid[f"{weight:.1f}"] for w, v in grid.items() if float(w) < weight)  # the smallest best
    assert metrics["dev"]["ndcg@10"] > metrics["dev_input"]["ndcg@10"]
    assert metrics["test"]["ndcg@10"] > metrics["test_input"]["ndcg@10"]
    assert metrics["interpolation"]["normalize"] == "minmax"


def test_validation_inputs_are_checked(
    compose, tmp_path, monkeypatch, small_beir, small_beir_bm25, tiny_bert
):
    scorer, calls = fake_scorer(small_beir, sign=1.0)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score", scorer)
    base = rerank_overrides(small_beir, small_beir_bm25, tiny_bert)
    with pytest.raises(ValueError, match=r"stage.interpolation=validate needs stage.val_run_file=.*'dev'"):
        run_stage(compose(*base, "stage.val_run_file=null"))
    # the test run passed as the validation run: refused, nothing chosen on test
    test_run = small_beir_bm25 / "test.trec"
    with pytest.raises(ValueError, match=r"that split 'dev' does not have.*stage.val_run_file"):
        run_stage(compose(*base, f"stage.val_run_file={test_run}"))
    with pytest.raises(ValueError, match=r"data.val_split is null"):
        run_stage(compose(*base, "data.val_split=null"))
    for bad in ("2", "abc", "-0.1"):
        with pytest.raises(
            ParamError, match=r"stage.interpolation must be 'validate' or a number from 0 to 1"
        ):
            run_stage(compose(*base, f"stage.interpolation={bad}"))
    with pytest.raises(ParamError, match=r"stage.normalize must be one of"):
        run_stage(compose(*base, "stage.normalize=rank"))
    with pytest.raises(ValueError, match=r"stage.interpolation_metric='ndcg@7' is not a metric"):
        run_stage(compose(*base, "stage.interpolation_metric=ndcg@7", output_dir=tmp_path / "m"))
    assert len(calls) == 1  # only the last one got as far as scoring


# ------------------------------------------------------------------------------------ BM25 as a third score
BM25 = {"q1": {"a": 1.0, "b": 0.0, "c": 4.0}, "q2": {"x": 2.0, "y": 2.0}}


def brute_force_hybrid(run, ce, bm25, depth, w, b, fusion=None, e=0.0):
    """Each query's top `depth` by w * z(ce) + b * z(bm25) + e * z(fusion) + (1 - w - b - e) * z(first
    stage), ties by doc id."""

    def z(x):
        x = np.array(x, dtype=float)
        return (x - x.mean()) / x.std() if x.std() > 0 else np.zeros_like(x)

    out = {}
    for qid, ranking in run.items():
        head = ranking[:depth]
        fused = (
            w * z([ce[qid][d] for d, _ in head])
            + b * z([bm25[qid][d] for d, _ in head])
            + (e * z([fusion[qid][d] for d, _ in head]) if e else 0.0)
            + (1 - w - b - e) * z([s for _, s in head])
        )
        order = sorted(range(len(head)), key=lambda i: (-fused[i], head[i][0]))
        out[qid] = [head[i][0] for i in order] + [d for d, _ in ranking[depth:]]
    return out


@pytest.mark.parametrize(("w", "b"), [(0.0, 0.3), (0.2, 0.5), (0.5, 0.5), (0.7, 0.1)])
def test_the_bm25_term_is_the_weighted_sum_of_normalised_scores(w, b):
    got = interpolated_rerank(RUN, CE, depth=3, weight=w, lexical=BM25, lexical_weight=b)
    assert {q: [d for d, _ in r] for q, r in got.items()} == brute_force_hybrid(RUN, CE, BM25, 3, w, b)
    with pytest.raises(ValueError, match="sum to at most 1"):
        interpolated_rerank(RUN, CE, depth=3, weight=0.6, lexical=BM25, lexical_weight=0.5)


def test_select_weight_over_pairs_breaks_ties_towards_the_smaller_w_then_b():
    pairs = [(w, b) for w in (0.0, 0.5) for b in (0.0, 0.3)]
    assert select_weight(lambda wb: 0.5, pairs)[0] == (0.0, 0.0)
    assert select_weight(lambda wb: wb[1], pairs)[0] == (0.0, 0.3)
    assert select_weight(lambda wb: wb[0] + wb[1], pairs)[0] == (0.5, 0.3)


def test_bm25_pair_scores_are_the_scores_search_gives(small_beir):
    from simlm.retrieval.bm25 import BM25Retriever

    data = RetrievalData(small_beir, layout="beir")
    queries = dict(list(data.queries("dev").items())[:10])
    bm25 = BM25Retriever().index(data.corpus)
    run = bm25.search(queries, top_k=len(data.corpus))
    pairs = [(q, d) for q, ranking in run.items() for d, _ in ranking]
    expected = [s for ranking in run.values() for _, s in ranking]
    assert bm25.score_pairs(queries, pairs) == pytest.approx(expected, rel=1e-6)
    unmatched = next(d for d in data.corpus.ids() if d not in dict(run[pairs[0][0]]))
    assert bm25.score_pairs(queries, [(pairs[0][0], unmatched)]).tolist() == [0.0]  # no shared term


def reversed_first_stage(tmp_path, small_beir, small_beir_bm25, tiny_bert) -> tuple[dict, tuple[str, ...]]:
    """A bad first stage, BM25's top 20 of each split in reverse order (`{split: run file}`), and the
    rerank overrides that re-rank it (depth 20, validated on dev)."""
    from simlm.data.formats import write_run

    runs = {}
    for split in ("dev", "test"):
        reversed_run = {
            q: [(d, float(20 - i)) for i, (d, _) in enumerate(ranking[:20][::-1])]
            for q, ranking in read_run(small_beir_bm25 / f"{split}.trec").items()
        }
        runs[split] = tmp_path / f"{split}.trec"
        write_run(runs[split], reversed_run)
    base = (
        *rerank_overrides(small_beir, small_beir_bm25, tiny_bert)[:-3],
        f"stage.run_file={runs['test']}",
        f"stage.val_run_file={runs['dev']}",
        "stage.depth=20",
    )
    return runs, base


def test_bm25_under_a_bad_re_ranker_repairs_a_bad_first_stage(
    compose, tmp_path, monkeypatch, small_beir, small_beir_bm25, tiny_bert
):
    """First stage: BM25's top 20 in reverse order. The re-ranker is adversarial (w = 0 on validation);
    BM25 as the third score gets a weight and lifts both splits; without it nothing changes."""
    scorer, _ = fake_scorer(small_beir, sign=-1.0)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score", scorer)
    runs, base = reversed_first_stage(tmp_path, small_beir, small_beir_bm25, tiny_bert)
    out = tmp_path / "hybrid"
    run_stage(compose(*base, "stage.bm25_weight=validate", output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["interpolation"]
    assert block["weight"] == 0.0 and block["bm25_weight"] > 0.0
    assert list(block["grid"])[:2] == ["0.0,0.0", "0.0,0.1"] and "1.0,0.0" in block["grid"]
    assert "0.6,0.5" not in block["grid"]  # w + b <= 1
    assert metrics["dev"]["ndcg@10"] > metrics["dev_input"]["ndcg@10"]
    assert metrics["test"]["ndcg@10"] > metrics["test_input"]["ndcg@10"]
    assert "BM25 b" not in json.dumps(metrics) and block["chosen_by"] == "validation (dev)"
    plain = tmp_path / "plain"
    run_stage(compose(*base, output_dir=plain))
    plain_block = json.loads((plain / "metrics.json").read_text())["interpolation"]
    assert plain_block["weight"] == 0.0 and "bm25_weight" not in plain_block
    assert read_run(plain / "test.trec") == read_run(runs["test"])
    with pytest.raises(ValueError, match="sum to more than 1"):
        run_stage(compose(*base, "stage.interpolation=0.8", "stage.bm25_weight=0.5"))


# ------------------------------------------------------------------------------------ a second bi-encoder
DENSE = {"q1": {"a": 0.2, "b": 0.9, "c": 0.1}, "q2": {"x": 0.5, "y": -0.5}}


@pytest.mark.parametrize(
    ("w", "b", "e"), [(0.0, 0.0, 0.4), (0.2, 0.3, 0.5), (0.5, 0.0, 0.5), (0.1, 0.1, 0.1)]
)
def test_the_fusion_term_is_the_weighted_sum_of_normalised_scores(w, b, e):
    got = interpolated_rerank(
        RUN, CE, depth=3, weight=w, lexical=BM25, lexical_weight=b, fusion=DENSE, fusion_weight=e
    )
    expected = brute_force_hybrid(RUN, CE, BM25, 3, w, b, DENSE, e)
    assert {q: [d for d, _ in r] for q, r in got.items()} == expected
    with pytest.raises(ValueError, match="sum to at most 1"):
        interpolated_rerank(RUN, CE, depth=3, weight=0.6, fusion=DENSE, fusion_weight=0.5)


def test_dense_pair_scores_are_each_pair_encoded_alone(small_beir, tiny_bert):
    """Scoring pairs encodes each distinct query and passage once; every score is the dot product of the
    query and the passage encoded one at a time (brute force)."""
    from simlm.models.encoder import load_encoder
    from simlm.retrieval.dense import score_pairs_dense
    from simlm.retrieval.encoding import encode_texts

    data = RetrievalData(small_beir, layout="beir")
    queries = data.queries("dev")
    run = {q: [d for d, _ in r[:5]] for q, r in _bm25_dev_run(small_beir).items()}
    pairs = [(queries[q], d) for q, docs in list(run.items())[:6] for d in docs]
    pairs += pairs[:3]  # a repeated pair scores the same
    encoder, tokenizer = load_encoder({"name_or_path": str(tiny_bert), "pooling": "mean", "p_max_len": 32})
    got = score_pairs_dense(encoder, tokenizer, data.corpus, pairs, batch_size=4)
    expected = []
    for q, d in pairs:
        row = data.corpus.row(d)
        qv = encode_texts(encoder, tokenizer, queries=[q])[0]
        pv = encode_texts(
            encoder, tokenizer, titles=data.corpus.titles([row]), texts=data.corpus.texts([row])
        )[0]
        expected.append(float(qv @ pv))
    assert got.dtype == np.float32 and got.shape == (len(pairs),)
    assert got == pytest.approx(expected, abs=1e-5)
    assert score_pairs_dense(encoder, tokenizer, data.corpus, []).size == 0


def _bm25_dev_run(small_beir):
    from simlm.retrieval.bm25 import BM25Retriever

    data = RetrievalData(small_beir, layout="beir")
    return BM25Retriever().index(data.corpus).search(data.queries("dev"), top_k=5)


def oracle_dense(small_beir):
    """A stand-in for `load_and_score_dense`: 1 for judged relevant pairs, 0 otherwise (records its calls)."""
    data = RetrievalData(small_beir, layout="beir")
    relevant: dict[str, set[str]] = {}
    for split in ("dev", "test"):
        for qid, judged in data.qrels(split).items():
            relevant.setdefault(data.queries(split)[qid], set()).update(
                d for d, g in judged.items() if g >= 1
            )
    calls = []

    def load_and_score_dense(model_cfg, corpus, pairs, runtime):
        calls.append((model_cfg, len(pairs)))
        return np.array([float(d in relevant.get(q, ())) for q, d in pairs], dtype=np.float32)

    return load_and_score_dense, calls


def test_a_second_bi_encoder_gets_a_validated_weight_and_is_recorded(
    compose, tmp_path, monkeypatch, small_beir, small_beir_bm25, tiny_bert
):
    """First stage: BM25's top 20 reversed; an adversarial re-ranker (w = 0). A good second bi-encoder
    gets e > 0 on validation and lifts both splits; the rerank block records its model config (for
    the KD teacher). At weight 0 it is not loaded and nothing changes; a weight without a model is refused."""
    scorer, _ = fake_scorer(small_beir, sign=-1.0)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score", scorer)
    dense, calls = oracle_dense(small_beir)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score_dense", dense)
    runs, base = reversed_first_stage(tmp_path, small_beir, small_beir_bm25, tiny_bert)
    model = f"stage.fusion_model={{name_or_path: '{tiny_bert}', pooling: mean, p_max_len: 32}}"
    out = tmp_path / "fused"
    run_stage(compose(*base, model, "stage.fusion_weight=validate", output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["interpolation"]
    assert block["weight"] == 0.0 and block["bm25_weight"] == 0.0 and block["fusion_weight"] > 0.0
    assert block["fusion_model"] == {"name_or_path": str(tiny_bert), "pooling": "mean", "p_max_len": 32}
    assert list(block["grid"])[:2] == ["0.0,0.0,0.0", "0.0,0.0,0.1"] and "1.0,0.0,0.0" in block["grid"]
    assert "0.6,0.0,0.5" not in block["grid"]  # w + b + e <= 1
    assert metrics["dev"]["ndcg@10"] > metrics["dev_input"]["ndcg@10"]
    assert metrics["test"]["ndcg@10"] > metrics["test_input"]["ndcg@10"]
    assert len(calls) == 1  # one load scores the test and the validation candidates
    assert calls[0][1] == sum(min(20, len(r)) for s in ("test", "dev") for r in read_run(runs[s]).values())
    # the same model at weight 0: not loaded, the first stage unchanged (w = 0 on validation)
    off = tmp_path / "off"
    run_stage(compose(*base, model, output_dir=off))
    assert (
        len(calls) == 1
        and "fusion_weight" not in json.loads((off / "metrics.json").read_text())["interpolation"]
    )
    assert read_run(off / "test.trec") == read_run(runs["test"])
    with pytest.raises(ValueError, match=r"stage.fusion_weight=0.3 .* stage.fusion_model is null"):
        run_stage(compose(*base, "stage.fusion_weight=0.3"))
    with pytest.raises(ParamError, match=r"stage.fusion_model must be a model config with name_or_path"):
        run_stage(compose(*base, "stage.fusion_model={pooling: mean}", "stage.fusion_weight=validate"))
    with pytest.raises(ValueError, match="sum to more than 1"):
        run_stage(compose(*base, model, "stage.interpolation=0.6", "stage.fusion_weight=0.5"))


def test_a_fixed_fusion_weight_scores_with_the_real_bi_encoder(
    compose, tmp_path, monkeypatch, small_beir, small_beir_bm25, tiny_bert
):
    """Unmocked second bi-encoder (a tiny BERT folder) at fixed w and e: the written run is the
    interpolation with its pair scores (`score_pairs_dense`), no validation needed."""
    from simlm.models.encoder import load_encoder
    from simlm.retrieval.dense import score_pairs_dense
    from simlm.retrieval.rerank import scores_by_query

    scorer, _ = fake_scorer(small_beir, sign=1.0)
    monkeypatch.setattr("simlm.stages.rerank.load_and_score", scorer)
    model_cfg = {"name_or_path": str(tiny_bert), "pooling": "mean", "p_max_len": 32}
    out = tmp_path / "fixed"
    run_stage(
        compose(
            *rerank_overrides(small_beir, small_beir_bm25, tiny_bert),
            "stage.interpolation=0.5",
            "stage.fusion_weight=0.3",
            f"stage.fusion_model={{name_or_path: '{tiny_bert}', pooling: mean, p_max_len: 32}}",
            output_dir=out,
        )
    )
    block = json.loads((out / "metrics.json").read_text())["interpolation"]
    assert (block["weight"], block["bm25_weight"], block["fusion_weight"]) == (0.5, 0.0, 0.3)
    assert block["chosen_by"] == "stage.interpolation" and "grid" not in block
    data = RetrievalData(small_beir, layout="beir")
    run_in = read_run(small_beir_bm25 / "test.trec")
    pairs = [(q, d) for q, ranking in run_in.items() for d, _ in ranking[:20]]
    encoder, tokenizer = load_encoder(model_cfg)
    queries = data.queries("test")
    text_pairs = [(queries[q], d) for q, d in pairs]
    ce = scores_by_query(pairs, scorer(None, None, text_pairs, None)[0])
    fusion = scores_by_query(pairs, score_pairs_dense(encoder, tokenizer, data.corpus, text_pairs).tolist())
    expected = interpolated_rerank(run_in, ce, 20, 0.5, fusion=fusion, fusion_weight=0.3)
    got = read_run(out / "test.trec")
    assert {q: [d for d, _ in r] for q, r in got.items()} == {
        q: [d for d, _ in r] for q, r in expected.items()
    }


def test_validating_on_the_head_alone_gives_the_whole_runs_values(small_beir, small_beir_bm25):
    """`head_only`: a cut-off metric at k <= depth of the re-ranked head equals that of the whole merged
    run (random scores at several weights); MAP and cut-offs beyond the depth get the whole run, where
    the cut run would differ."""
    from simlm.evaluation import evaluate
    from simlm.retrieval.rerank import head_only

    data = RetrievalData(small_beir, layout="beir")
    run = read_run(small_beir_bm25 / "dev.trec")
    depth = 50
    rng = np.random.default_rng(0)
    ce = {q: {d: float(rng.normal()) for d, _ in r[:depth]} for q, r in run.items()}
    dense = {q: {d: float(rng.normal()) for d, _ in r[:depth]} for q, r in run.items()}
    for metric in ("ndcg@10", "mrr@10", "recall@50"):
        head = head_only(run, depth, metric)
        assert all(len(r) <= depth for r in head.values()) and any(len(r) > depth for r in run.values())
        for w, e in ((0.0, 0.0), (0.3, 0.2), (1.0, 0.0), (0.5, 0.5)):
            whole = evaluate(
                interpolated_rerank(run, ce, depth, w, fusion=dense, fusion_weight=e), data, "dev"
            )
            cut = evaluate(
                interpolated_rerank(head, ce, depth, w, fusion=dense, fusion_weight=e), data, "dev"
            )
            assert cut[metric] == pytest.approx(whole[metric], abs=1e-12), (metric, w, e)
    for metric in ("map", "recall@100", "ndcg"):
        assert head_only(run, depth, metric) is run
    cut = evaluate({q: r[:depth] for q, r in run.items()}, data, "dev")
    assert cut["recall@100"] < evaluate(run, data, "dev")["recall@100"]  # why recall@100 keeps the tail
