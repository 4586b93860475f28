"""`stage=mine` from run files (IR qrels and QA answer matching) and QA evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simlm.data.formats import read_examples, write_run
from simlm.stages import run_stage


def test_mine_stage_reproduces_the_bm25_negatives(compose, tmp_path, small_beir, small_beir_bm25):
    # same run, same rule, same seed: stage=mine must rebuild exactly the file stage=bm25 wrote
    cfg = compose(
        "stage=mine",
        "data=beir",
        f"data.root={small_beir}",
        f"stage.run_file={small_beir_bm25 / 'train.msmarco.txt'}",
        "stage.mining.num_negatives=40",
    )
    metrics = run_stage(cfg)
    out = Path(cfg.paths.output_dir)
    assert read_examples(out / "train.jsonl") == read_examples(small_beir_bm25 / "train.jsonl")
    assert json.loads((out / "metrics.json").read_text())["train"]["examples"] == 150
    assert metrics is None


def test_mine_stage_false_negative_controls(compose, small_beir, small_beir_bm25):
    from simlm.data.formats import read_run

    run = read_run(small_beir_bm25 / "train.msmarco.txt")
    cfg = compose(
        "stage=mine",
        "data=beir",
        f"data.root={small_beir}",
        f"stage.run_file={small_beir_bm25 / 'train.msmarco.txt'}",
        "stage.mining.skip_top=5",
    )
    run_stage(cfg)
    for ex in read_examples(Path(cfg.paths.output_dir) / "train.jsonl"):
        top5 = {d for d, _ in run[ex.query_id][:5]}
        assert not top5 & set(ex.negatives.doc_ids)


def make_qa_dir(root: Path) -> Path:
    passages = [
        {"id": "0", "title": "Paris", "contents": "Paris is the capital of France."},
        {"id": "1", "title": "Lyon", "contents": "Lyon is a city in France known for food."},
        {"id": "2", "title": "Berlin", "contents": "Berlin is the capital of Germany."},
        {"id": "3", "title": "Rome", "contents": "Rome is the capital of Italy, not of France."},
    ]
    root.mkdir(parents=True)
    (root / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (root / "train_queries.tsv").write_text(
        "what is the capital of france\t[\"Paris\"]\nwhat is the capital of germany\t['Berlin']\n"
    )
    return root


def test_qa_mining_and_answer_accuracy(compose, tmp_path):
    root = make_qa_dir(tmp_path / "qa")
    run = {
        "what is the capital of france": [("3", 3.0), ("0", 2.0), ("1", 1.0)],
        "what is the capital of germany": [("0", 3.0), ("1", 2.0), ("3", 1.0)],
    }
    write_run(tmp_path / "train.msmarco.txt", run, "msmarco")
    cfg = compose(
        "stage=mine",
        "data=msmarco",
        f"data.root={root}",
        "data.task=qa",
        f"stage.run_file={tmp_path / 'train.msmarco.txt'}",
        output_dir=tmp_path / "mined",
    )
    run_stage(cfg)
    (ex,) = read_examples(
        tmp_path / "mined" / "train.jsonl"
    )  # germany: no answer in its candidates -> dropped
    assert (
        ex.positives.doc_ids == ["0"]
        and sorted(ex.negatives.doc_ids) == ["1", "3"]
        and ex.answers == ["Paris"]
    )

    cfg = compose(
        "stage=evaluate",
        "data=msmarco",
        f"data.root={root}",
        "data.task=qa",
        "data.eval_split=train",
        f"stage.run_file={tmp_path / 'train.msmarco.txt'}",
        output_dir=tmp_path / "eval",
    )
    run_stage(cfg)
    acc = json.loads((tmp_path / "eval" / "metrics.json").read_text())["train"]
    # france: answer at rank 2; germany: never retrieved -> acc@1 = 0, acc@5 = 1/2
    assert acc["acc@1"] == 0.0 and acc["acc@5"] == pytest.approx(0.5)
