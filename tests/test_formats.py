"""Readers/writers of every file format: round trips, SimLM's released layout, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from simlm.data.corpus import Corpus, Passage
from simlm.data.dataset import RetrievalData
from simlm.data.errors import DataFormatError, EmptySplitError
from simlm.data.formats import (
    rank_scores,
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
    read_examples,
    read_qa_queries_tsv,
    read_queries_tsv,
    read_run,
    read_simlm_passages,
    read_trec_qrels,
    write_examples,
    write_run,
)
from simlm.data.io import atomic_write
from simlm.evaluation import evaluate_run, mrr_at_k


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(*objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def assert_names(err: DataFormatError, path: Path, line: int | None, field: str | None) -> None:
    assert err.path == str(path)
    assert err.line == line
    assert err.field == field
    assert str(path) in str(err) and (line is None or f":{line}:" in str(err))


# ----------------------------------------------------------------------------- corpora
@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_beir_corpus_reads_plain_and_gzip(tmp_path, name):
    path = write(tmp_path / name, jsonl({"_id": "a", "title": "T", "text": "x"}, {"_id": 7, "text": "y"}))
    corpus = read_beir_corpus(path)
    assert len(corpus) == 2
    assert corpus[0] == Passage("a", "T", "x")
    assert corpus[corpus.row("7")] == Passage("7", "", "y")
    assert "a" in corpus and "b" not in corpus


def test_simlm_passages_row_is_pid(tmp_path):
    rows = [{"id": str(i), "title": f"t{i}", "contents": f"c{i}"} for i in range(5)]
    corpus = read_simlm_passages(write(tmp_path / "passages.jsonl.gz", jsonl(*rows)))
    assert corpus.row("3") == 3 and corpus.doc_id(4) == "4"
    assert "5" not in corpus and "03" not in corpus
    assert corpus.titles([4, 0]) == ["t4", "t0"]
    assert [p.text for p in corpus.passages([2, 1])] == ["c2", "c1"]


def test_corpus_switches_to_an_id_map_for_non_row_ids():
    corpus = Corpus.from_passages([Passage("0", "", "a"), Passage("1", "", "b"), Passage("x9", "", "c")])
    assert corpus.row("x9") == 2 and corpus.row("1") == 1
    with pytest.raises(KeyError):
        corpus.row("2")


def test_duplicate_passage_id_names_file_line_field(tmp_path):
    path = write(
        tmp_path / "corpus.jsonl",
        jsonl({"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}),
    )
    with pytest.raises(DataFormatError) as e:
        read_beir_corpus(path)
    assert_names(e.value, path, 3, "id")
    assert "duplicate" in str(e.value)


def test_duplicate_simlm_pid_detected_after_row_ids(tmp_path):
    path = write(
        tmp_path / "passages.jsonl",
        jsonl({"id": "0", "contents": "a"}, {"id": "1", "contents": "b"}, {"id": "0", "contents": "c"}),
    )
    with pytest.raises(DataFormatError) as e:
        read_simlm_passages(path)
    assert_names(e.value, path, 3, "id")


def test_malformed_json_names_line(tmp_path):
    path = write(tmp_path / "corpus.jsonl.gz", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n')
    with pytest.raises(DataFormatError) as e:
        read_beir_corpus(path)
    assert_names(e.value, path, 2, None)
    assert "malformed JSON" in str(e.value)


def test_missing_and_mistyped_keys(tmp_path):
    path = write(tmp_path / "corpus.jsonl", jsonl({"_id": "a", "text": "x"}, {"_id": "b"}))
    with pytest.raises(DataFormatError) as e:
        read_beir_corpus(path)
    assert_names(e.value, path, 2, "text")
    path = write(tmp_path / "passages.jsonl", jsonl({"id": "0", "contents": ["not", "text"]}))
    with pytest.raises(DataFormatError) as e:
        read_simlm_passages(path)
    assert_names(e.value, path, 1, "contents")


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="empty"):
        read_beir_corpus(write(tmp_path / "corpus.jsonl", "\n"))


# ----------------------------------------------------------------------------- queries and qrels
def test_queries_tsv_and_duplicates(tmp_path):
    path = write(tmp_path / "dev_queries.tsv", "1\twhat is x\n2\tyet\tanother\n")
    assert read_queries_tsv(path) == {"1": "what is x", "2": "yet\tanother"}
    path = write(tmp_path / "bad_queries.tsv", "1\ta\n1\tb\n")
    with pytest.raises(DataFormatError) as e:
        read_queries_tsv(path)
    assert_names(e.value, path, 2, "qid")
    path = write(tmp_path / "queries.jsonl", jsonl({"_id": "q", "text": "a"}, {"_id": "q", "text": "b"}))
    with pytest.raises(DataFormatError) as e:
        read_beir_queries(path)
    assert_names(e.value, path, 2, "_id")


def test_qa_queries_parse_answers_safely(tmp_path):
    path = write(
        tmp_path / "nq_dev_queries.tsv", 'who wrote x\t["A. Author", "B"]\nwhere is y\t[\'Paris\']\n'
    )
    queries, answers = read_qa_queries_tsv(path)
    assert queries["who wrote x"] == "who wrote x"
    assert answers == {"who wrote x": ["A. Author", "B"], "where is y": ["Paris"]}
    path = write(tmp_path / "evil_queries.tsv", "q\t__import__('os').system('true')\n")
    with pytest.raises(ValueError) as e:
        read_qa_queries_tsv(path)
    assert str(path) in str(e.value) and "answers" in str(e.value)


def test_qrels_tab_and_space_and_header(tmp_path):
    trec = write(tmp_path / "dev_qrels.txt", "1\t0\t10\t1\n1 0 11 0\n2 Q0 12 3\n")
    assert read_trec_qrels(trec) == {"1": {"10": 1, "11": 0}, "2": {"12": 3}}
    beir = write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    assert read_beir_qrels(beir) == {"q1": {"d1": 1, "d2": 2}}


def test_qrels_pointing_at_unknown_ids(tmp_path):
    beir = write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n")
    with pytest.raises(DataFormatError) as e:
        read_beir_qrels(beir, query_ids={"q1"}, doc_ids={"d1"})
    assert_names(e.value, beir, 3, "corpus-id")
    trec = write(tmp_path / "dev_qrels.txt", "1\t0\t10\t1\n9\t0\t10\t1\n")
    with pytest.raises(DataFormatError) as e:
        read_trec_qrels(trec, query_ids={"1"})
    assert_names(e.value, trec, 2, "query-id")


def test_qrels_bad_grade_and_columns(tmp_path):
    path = write(tmp_path / "dev_qrels.txt", "1 0 10 yes\n")
    with pytest.raises(DataFormatError) as e:
        read_trec_qrels(path)
    assert_names(e.value, path, 1, "rel")
    path = write(tmp_path / "x_qrels.txt", "1 0 10\n")
    with pytest.raises(DataFormatError, match="4 columns"):
        read_trec_qrels(path)


# ----------------------------------------------------------------------------- training examples
SIMLM_EXAMPLE = {
    "query_id": "1185869",
    "query": ")what was the immediate impact of the success of the manhattan project?",
    "positives": {"doc_id": ["0"], "score": [-1]},
    "negatives": {"doc_id": ["2", "3", "1"], "score": [25.6, 24.1, -1]},
}


def test_simlm_examples_load_unchanged_and_round_trip(tmp_path):
    src = write(
        tmp_path / "train.jsonl", jsonl(SIMLM_EXAMPLE, {**SIMLM_EXAMPLE, "query_id": "2", "answers": ["a"]})
    )
    examples = read_examples(src, doc_ids={"0", "1", "2", "3"})
    assert examples[0].positives.doc_ids == ["0"] and examples[0].negatives.scores == [25.6, 24.1, -1.0]
    assert examples[1].answers == ["a"]
    out = tmp_path / "copy.jsonl"
    assert write_examples(out, examples) == 2
    assert [json.loads(line) for line in out.read_text().splitlines()][0] == {
        **SIMLM_EXAMPLE,
        "positives": {"doc_id": ["0"], "score": [-1.0]},
    }


def test_examples_accept_integer_doc_ids_and_missing_negatives(tmp_path):
    src = write(
        tmp_path / "dev.jsonl",
        jsonl({"query_id": 5, "query": "q", "positives": {"doc_id": [3], "score": [1]}}),
    )
    (ex,) = read_examples(src)
    assert ex.query_id == "5" and ex.positives.doc_ids == ["3"] and ex.negatives.doc_ids == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"positives": {"doc_id": [], "score": []}}, "positives.doc_id"),
        ({"positives": {"doc_id": ["0", "1"], "score": [1.0]}}, "positives.score"),
        ({"negatives": {"doc_id": ["0", "99"], "score": [1, 2]}}, "negatives.doc_id"),
        ({"negatives": ["2", "3"]}, "negatives"),
        ({"query": None}, "query"),
    ],
)
def test_bad_examples_name_line_and_field(tmp_path, change, field):
    bad = {**SIMLM_EXAMPLE, **change}
    if change.get("query", "") is None:
        del bad["query"]
    path = write(tmp_path / "train.jsonl", jsonl(SIMLM_EXAMPLE, bad))
    with pytest.raises(DataFormatError) as e:
        read_examples(path, doc_ids={"0", "1", "2", "3"})
    assert_names(e.value, path, 2, field)


def test_empty_examples_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="no training examples"):
        read_examples(write(tmp_path / "train.jsonl", ""))


# ----------------------------------------------------------------------------- runs
RUN = {"q1": [("d3", 2.5), ("d1", 1.0), ("d2", 1.0)], "q2": [("7", 0.5)]}


@pytest.mark.parametrize("fmt", ["trec", "msmarco"])
def test_run_round_trip(tmp_path, fmt):
    path = tmp_path / f"run.{fmt}"
    write_run(path, RUN, fmt)
    assert read_run(path) == RUN
    first = path.read_text().splitlines()[0].split()
    assert len(first) == (6 if fmt == "trec" else 4)


def test_rank_scores_breaks_ties_by_doc_id():
    assert rank_scores([("d2", 1.0), ("d10", 1.0), ("d1", 3.0)]) == [("d1", 3.0), ("d10", 1.0), ("d2", 1.0)]
    # numeric ids tie-break numerically, lower pid first (SimLM)
    assert rank_scores([("10", 1.0), ("9", 1.0), ("100", 1.0)], top_k=2) == [("9", 1.0), ("10", 1.0)]


def test_three_column_msmarco_run_scores_by_rank(tmp_path):
    path = write(tmp_path / "dev.msmarco.txt", "1\t20\t2\n1\t10\t1\n")
    assert read_run(path) == {"1": [("10", 1.0), ("20", 0.5)]}


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("1 Q0 d1 1 2.0 x\n1 Q0 d2 2 1.0\n", 2, None),
        ("1\td1\tone\t2.0\n", 1, "rank"),
        ("1\td1\t1\tnan\n", 1, "score"),
        ("1\td1\t1\t2.0\n1\td1\t2\t1.0\n", 2, "doc_id"),
        ("1 d1\n", 1, None),
    ],
)
def test_bad_run_lines(tmp_path, text, line, field):
    path = write(tmp_path / "run.txt", text)
    with pytest.raises(DataFormatError) as e:
        read_run(path)
    assert_names(e.value, path, line, field)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("partial\n")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("new\n")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"


# ----------------------------------------------------------------------------- whole layouts
def make_simlm_dir(root: Path) -> Path:
    passages = [{"id": str(i), "title": f"title {i}", "contents": f"passage {i}"} for i in range(6)]
    write(root / "passages.jsonl.gz", jsonl(*passages))
    write(root / "dev_queries.tsv", "100\tfirst query\n200\tsecond query\n300\tthird query\n")
    # TREC-DL style grades 0..3: threshold for MRR becomes 2
    write(root / "dev_qrels.txt", "100 0 1 1\n100 0 2 3\n200\t0\t4\t2\n300 0 5 1\n")
    write(root / "train_queries.tsv", "100\tfirst query\n")
    write(root / "train_qrels.txt", "100\t0\t1\t1\n")
    write(root / "train.jsonl", jsonl({**SIMLM_EXAMPLE, "query_id": "100", "query": "first query"}))
    return root


def test_simlm_layout_loads_and_evaluates_the_simlm_way(tmp_path):
    data = RetrievalData(make_simlm_dir(tmp_path / "msmarco"), layout="msmarco")
    assert len(data.corpus) == 6 and data.corpus[2].title == "title 2"
    assert data.queries("dev")["200"] == "second query"
    qrels = data.qrels("dev", check_docs=True)
    assert read_examples(data.examples_path("train"), doc_ids=data.corpus)[0].query_id == "100"
    run_path = write(
        tmp_path / "dev.msmarco.txt",
        "100\t1\t1\t9\n100\t2\t2\t8\n200\t0\t1\t5\n200\t4\t2\t4\n300\t5\t11\t1\n",
    )
    run = read_run(run_path)
    # grade-1 doc at rank 1 does not count (threshold 2): q100 RR 1/2, q200 RR 1/2, q300 at rank 11 -> 0
    assert mrr_at_k(run, qrels) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert evaluate_run(run, qrels)["mrr@10"] == pytest.approx(1 / 3)


def test_missing_split_and_empty_split(tmp_path):
    root = make_simlm_dir(tmp_path / "msmarco")
    data = RetrievalData(root, layout="msmarco")
    with pytest.raises(FileNotFoundError, match="trec_dl2019"):
        data.qrels("trec_dl2019")
    write(root / "empty_queries.tsv", "\n")
    with pytest.raises(EmptySplitError, match="empty_queries.tsv"):
        data.queries("empty")
    write(root / "empty_qrels.txt", "")
    with pytest.raises(EmptySplitError):
        data.qrels("empty")


@pytest.mark.parametrize(
    "text",
    [
        "2\td9\t2\t0.5\n1\td1\t2\t1.0\n1\td3\t1\t2.5\n2\td8\t1\t0.7\n",  # unsorted lines, qids in first-seen order
        "1 Q0 d1 2 1.0 run\n1 Q0 d3 1 2.5 run\n",
        "1\td1\t2\n1\td3\t1\n",
    ],
)
@pytest.mark.parametrize("name", ["run.txt", "run.txt.gz"])
def test_fast_run_reader_agrees_with_line_reader(tmp_path, text, name):
    from simlm.data.formats import _read_run_arrow, _read_run_lines

    path = write(tmp_path / name, text)
    fast = _read_run_arrow(path)
    assert fast is not None and fast == _read_run_lines(path)
    assert list(fast) == list(_read_run_lines(path))
