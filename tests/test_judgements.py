"""Judgements that would give silently wrong metrics: unknown passages, negative and fractional grades,
runs of another split, and the MRR@10 relevance threshold (issue 14, items 3-6)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from simlm.data.corpus import Corpus, Passage
from simlm.data.datamodules import examples_from_qrels
from simlm.data.dataset import RetrievalData
from simlm.data.errors import DataFormatError
from simlm.data.formats import read_beir_qrels, read_trec_qrels
from simlm.evaluation import check_run_coverage, evaluate_run, mrr_at_k, mrr_threshold, trec_metrics
from simlm.retrieval.mining import MiningConfig, mine_examples
from simlm.stages import run_stage


def ranked(*doc_ids: str) -> list[tuple[str, float]]:
    return [(d, float(len(doc_ids) - i)) for i, d in enumerate(doc_ids)]


def write_beir(root: Path, qrels_lines: str, queries: tuple[str, ...] = ("q1", "q2", "q3")) -> Path:
    """A 4-passage BEIR folder whose test qrels are `qrels_lines` (after the header)."""
    (root / "qrels").mkdir(parents=True)
    texts = {"d1": "apple pie", "d2": "banana bread", "d3": "cherry tart", "d4": "date cake"}
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in texts.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n" for q in queries)
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels_lines)
    return root


def write_trec_run(path: Path, run: dict[str, list[str]]) -> Path:
    lines = [
        f"{qid} Q0 {doc} {rank} {10 - rank}.0 test\n"
        for qid, docs in run.items()
        for rank, doc in enumerate(docs, start=1)
    ]
    path.write_text("".join(lines))
    return path


def evaluate_stage(compose, tmp_path: Path, root: Path, run_file: Path, *overrides: str):
    cfg = compose(
        "stage=evaluate",
        "data=beir",
        f"data.root={root}",
        f"stage.run_file={run_file}",
        *overrides,
        output_dir=tmp_path / "out",
    )
    run_stage(cfg)
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


GOOD_QRELS = "q1\td1\t1\nq2\td2\t1\nq3\td3\t1\n"


# ------------------------------------------------------------------ 3. qrels naming an unknown passage
def test_retrieval_data_checks_qrels_against_the_corpus_by_default(tmp_path):
    root = write_beir(tmp_path / "beir", "q1\td1\t1\nq2\tnope\t1\n")
    data = RetrievalData(root, layout="beir")
    assert set(data.queries("test")) == {"q1", "q2"}  # the queries alone do not need the corpus
    with pytest.raises(DataFormatError, match=r"test.tsv:3: field 'corpus-id': unknown passage id 'nope'"):
        data.qrels("test")


def test_simlm_layout_qrels_beyond_the_last_row_are_refused(tmp_path):
    root = tmp_path / "msmarco"
    root.mkdir()
    (root / "passages.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "title": "", "contents": f"p {i}"}) + "\n" for i in range(3))
    )
    (root / "dev_queries.tsv").write_text("100\tfirst\n200\tsecond\n")
    (root / "dev_qrels.txt").write_text("100 0 2 1\n200 0 3 1\n")  # rows are 0..2
    with pytest.raises(DataFormatError, match=r"dev_qrels.txt:2: field 'corpus-id': unknown passage id '3'"):
        RetrievalData(root, layout="msmarco").qrels("dev")


@pytest.mark.parametrize("stage", ["evaluate", "bm25"])
def test_stages_refuse_qrels_naming_unknown_passages(compose, tmp_path, stage):
    root = write_beir(tmp_path / "beir", "q1\td1\t1\nq2\td2\t1\nq3\td9\t1\n")
    run_file = write_trec_run(tmp_path / "test.trec", {"q1": ["d1"], "q2": ["d2"], "q3": ["d3"]})
    overrides = [f"stage.run_file={run_file}"] if stage == "evaluate" else ["stage.negatives.enabled=false"]
    cfg = compose(f"stage={stage}", "data=beir", f"data.root={root}", *overrides, output_dir=tmp_path / "out")
    with pytest.raises(
        DataFormatError, match=r"qrels/test.tsv:4: field 'corpus-id': unknown passage id 'd9'"
    ):
        run_stage(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------ 4. relevance grades
@pytest.mark.parametrize("reader, text, line, field", [
    (read_beir_qrels, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1.7\n", 3, "score"),
    (read_trec_qrels, "1 0 10 1\n1 0 11 0.5\n", 2, "rel"),
])  # fmt: skip
def test_fractional_grades_are_refused_not_truncated(tmp_path, reader, text, line, field):
    path = tmp_path / "qrels.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=rf"qrels.txt:{line}: field '{field}': .*integer grade"):
        reader(path)


def test_negative_and_integral_float_grades_are_kept(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t-1\nq1\td2\t2.0\nq2\td3\t-1\n")
    assert read_beir_qrels(path) == {"q1": {"d1": -1, "d2": 2}, "q2": {"d3": -1}}


def brute_ndcg(ranking: list[str], judged: dict[str, int], k: int = 10) -> float:
    """nDCG@k with gain = grade for grades > 0 and 0 for judged-not-relevant (<= 0) passages."""
    gain = {d: max(g, 0) for d, g in judged.items()}
    dcg = sum(gain.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted(gain.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def test_negative_grades_are_judged_non_relevant_in_every_metric():
    qrels = {"q1": {"a": -1, "b": 1, "c": 2}, "q2": {"x": -1}}  # q2: judged, nothing relevant
    run = {"q1": ranked("a", "b", "c"), "q2": ranked("x", "y")}
    metrics = evaluate_run(run, qrels)
    assert metrics["num_queries"] == 2
    # q1: first relevant at rank 2 (threshold 1: -1 is not relevant) -> 1/2; q2 -> 0
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["ndcg@10"] == pytest.approx((brute_ndcg(["a", "b", "c"], qrels["q1"]) + 0) / 2)
    # recall: both relevant passages of q1 found; q2 has none -> 0
    assert metrics["recall@50"] == pytest.approx((1 + 0) / 2)
    # AP q1: relevant at ranks 2 and 3 -> (1/2 + 2/3) / 2
    assert metrics["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0) / 2)
    # exactly what grade 0 gives
    zeroed = {q: {d: max(g, 0) for d, g in j.items()} for q, j in qrels.items()}
    assert evaluate_run(run, zeroed) == metrics
    assert trec_metrics(run, qrels) == trec_metrics(run, zeroed)


def test_negative_grades_are_never_positives_for_training_or_mining():
    qrels = {"q1": {"d1": -1, "d2": 1}, "q2": {"d3": -1}}
    queries = {"q1": "first", "q2": "second"}
    corpus = Corpus.from_passages([Passage(f"d{i}", "", f"text {i}") for i in range(1, 30)])
    run = {"q1": ranked("d1", "d2", "d4"), "q2": ranked("d3", "d5")}
    examples, stats = mine_examples(run, qrels, queries, corpus, MiningConfig(num_negatives=5, min_random=1))
    assert [ex.query_id for ex in examples] == ["q1"] and stats["skipped_no_positive"] == 1
    assert examples[0].positives.doc_ids == ["d2"]
    assert "d1" in examples[0].negatives.doc_ids  # judged not relevant: a fine hard negative
    assert [ex.positives.doc_ids for ex in examples_from_qrels(qrels, queries)] == [["d2"]]
    with pytest.raises(ValueError, match="min_positive_grade must be >= 1"):
        MiningConfig(min_positive_grade=0)


# ------------------------------------------------------------------ 5. runs that miss the judged queries
def test_a_run_sharing_no_query_with_the_qrels_is_refused(compose, tmp_path):
    root = write_beir(tmp_path / "beir", GOOD_QRELS)
    run_file = write_trec_run(tmp_path / "dev.trec", {"x1": ["d1"], "x2": ["d2"]})
    with pytest.raises(ValueError, match=r"dev.trec: none of its 2 query ids is judged in split 'test'"):
        evaluate_stage(compose, tmp_path, root, run_file)
    assert not (tmp_path / "out" / "metrics.json").exists()
    with pytest.raises(ValueError, match=r"the run for split 'test': none of its 0 query ids"):
        check_run_coverage({}, {"q1": {"d1": 1}}, "the run for split 'test'", "test")


def test_a_run_covering_under_half_of_the_judged_queries_warns(compose, tmp_path, caplog):
    root = write_beir(tmp_path / "beir", GOOD_QRELS)
    run_file = write_trec_run(tmp_path / "part.trec", {"q1": ["d1"], "x": ["d2"]})
    with caplog.at_level(logging.WARNING, logger="simlm.evaluation.metrics"):
        metrics = evaluate_stage(compose, tmp_path, root, run_file)
    assert metrics["test"]["mrr@10"] == pytest.approx(1 / 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("part.trec covers only 1 of the 3 judged queries of split 'test'" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simlm.evaluation.metrics"):
        check_run_coverage({"q1": [], "q2": []}, {"q1": {}, "q2": {}, "q3": {}}, "run", "test")
    assert not caplog.records  # 2 of 3: no warning


# ------------------------------------------------------------------ 6. the MRR@10 relevance threshold
GRADED_1_TO_4 = "q1\td1\t1\nq1\td2\t4\nq2\td3\t2\nq3\td4\t1\n"


def test_mrr_threshold_rule_and_setting():
    qrels = {"q": {"a": 1, "b": 4}}
    assert mrr_threshold(qrels) == 2 and mrr_threshold({"q": {"a": 1, "b": 2}}) == 1
    assert mrr_threshold(qrels, 1) == 1
    run = {"q": ranked("a", "b")}
    assert mrr_at_k(run, qrels) == pytest.approx(1 / 2) and mrr_at_k(run, qrels, threshold=1) == 1.0
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="mrr_threshold"):
            mrr_threshold(qrels, bad)


def test_mrr_threshold_is_a_data_setting_recorded_in_metrics_json(compose, tmp_path):
    root = write_beir(tmp_path / "beir", GRADED_1_TO_4)
    run_file = write_trec_run(tmp_path / "test.trec", {"q1": ["d1", "d2"], "q2": ["d3"], "q3": ["d4"]})
    default = evaluate_stage(compose, tmp_path / "default", root, run_file)["test"]
    # graded 1..4: threshold 2, so d1 (1) is not relevant: q1 1/2, q2 1, q3 0
    assert default["mrr_threshold"] == 2
    assert default["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    one = evaluate_stage(compose, tmp_path / "one", root, run_file, "data.mrr_threshold=1")["test"]
    assert one["mrr_threshold"] == 1 and one["mrr@10"] == pytest.approx(1.0)
    assert {k: v for k, v in one.items() if k not in ("mrr@10", "mrr_threshold")} == {
        k: v for k, v in default.items() if k not in ("mrr@10", "mrr_threshold")
    }
    with pytest.raises(ValueError, match="data.mrr_threshold must be an integer >= 1"):
        RetrievalData.from_config(compose("data=beir", f"data.root={root}", "data.mrr_threshold=0").data)


def test_every_data_config_has_the_mrr_threshold_setting(compose):
    conf = Path(__file__).resolve().parents[1] / "conf" / "data"
    for path in sorted(conf.glob("*.yaml")):  # its own line or inherited (scifact: from beir)
        data = compose(f"data={path.stem}").data
        assert "mrr_threshold" in data and data.mrr_threshold is None, path.name


def test_validation_metrics_take_the_data_sets_mrr_threshold(compose, tmp_path):
    """The datamodules hand `data.mrr_threshold` to the validation metrics (callback and re-ranker)."""
    from types import SimpleNamespace

    from simlm.data.datamodules import CorpusDataModule

    threshold = CorpusDataModule.mrr_threshold.fget
    assert threshold(SimpleNamespace(data=SimpleNamespace(mrr_threshold=2))) == 2
    assert threshold(SimpleNamespace(data=None)) is None  # before setup: the default rule
