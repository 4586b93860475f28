"""End to end through Hydra: `run.py` dispatch, the bm25 and evaluate stages, bad input, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simlm.data.errors import DataFormatError
from simlm.data.formats import read_examples, read_run
from simlm.stages import optimized_value, run_stage
from tests.conftest import PROJECT_ROOT, SCIFACT, requires_scifact


def test_bm25_on_demo_writes_runs_metrics_and_negatives(compose, tmp_path, demo_root):
    cfg = compose("stage=bm25", "data=demo", "stage.top_k=100", "optimized_metric=test/ndcg@10")
    value = run_stage(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["dev", "test"]  # the validation split (data.val_split), then data.eval_split
    assert len(read_run(out / "dev.trec")) == metrics["dev"]["num_queries"] > 0
    assert metrics["test"]["ndcg@10"] == pytest.approx(value) and 0.2 < value < 1.0
    trec, marco = read_run(out / "test.trec"), read_run(out / "test.msmarco.txt")
    assert trec.keys() == marco.keys() and all(len(r) <= 100 for r in trec.values())
    assert all([d for d, _ in trec[q]] == [d for d, _ in marco[q]] for q in trec)
    examples = read_examples(out / "train.jsonl")
    stats = json.loads((out / "train_mining_stats.json").read_text())
    assert stats["examples"] == len(examples) > 1000
    for ex in examples[:50]:
        assert not set(ex.positives.doc_ids) & set(ex.negatives.doc_ids)
        assert len(ex.negatives.doc_ids) == 210


def test_evaluate_stage_reproduces_the_bm25_metrics(compose, tmp_path, demo_root):
    bm25 = compose("stage=bm25", "data=demo", "stage.negatives.enabled=false", output_dir=tmp_path / "bm25")
    run_stage(bm25)
    expected = json.loads((tmp_path / "bm25" / "metrics.json").read_text())
    for name in ("test.trec", "test.msmarco.txt"):
        cfg = compose(
            "stage=evaluate",
            "data=demo",
            f"stage.run_file={tmp_path / 'bm25' / name}",
            output_dir=tmp_path / name,
        )
        run_stage(cfg)
        assert json.loads((tmp_path / name / "metrics.json").read_text()) == {"test": expected["test"]}


def write_beir(root: Path, corpus_lines: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(corpus_lines))
    (root / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "apple pie"}\n{"_id": "q2", "text": "banana bread"}\n'
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def test_bad_corpus_fails_with_file_and_line_and_writes_nothing(compose, tmp_path):
    root = write_beir(
        tmp_path / "beir",
        [
            '{"_id": "d1", "title": "", "text": "apple pie recipe"}\n',
            '{"_id": "d2", "text": "banana bread"\n',
        ],
    )
    cfg = compose("stage=bm25", "data=beir", f"data.root={root}", output_dir=tmp_path / "out")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: malformed JSON"):
        run_stage(cfg)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_qrels_with_unknown_query_fail_cleanly(compose, tmp_path):
    root = write_beir(
        tmp_path / "beir", ['{"_id": "d1", "text": "apple pie"}\n', '{"_id": "d2", "text": "banana"}\n']
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td2\t1\n")
    cfg = compose("stage=bm25", "data=beir", f"data.root={root}", output_dir=tmp_path / "out")
    with pytest.raises(DataFormatError, match=r"test.tsv:3: field 'query-id': unknown query id 'q9'"):
        run_stage(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_optimized_value_lookup():
    metrics = {"dev": {"ndcg@10": 0.5}, "test": {"ndcg@10": 0.7}}
    assert optimized_value(metrics, "test/ndcg@10") == 0.7
    assert optimized_value(metrics, None) is None
    with pytest.raises(KeyError):
        optimized_value(metrics, "test/nope")


def run_cli(*args: str, tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIMLM_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_help_lists_config_groups(tmp_path, cache_dir):
    res = run_cli("--help", tmp_path=tmp_path, cache=cache_dir)
    assert res.returncode == 0, res.stderr
    for group in (
        "stage:",
        "data:",
        "model:",
        "trainer:",
        "logger:",
        "callbacks:",
        "paths:",
        "experiment:",
        "debug:",
    ):
        assert group in res.stdout


def test_cli_bm25_demo_run_dir_layout(tmp_path, cache_dir, demo_root):
    res = run_cli(
        "stage=bm25", "data=demo", f"paths.log_dir={tmp_path}/outputs", tmp_path=tmp_path, cache=cache_dir
    )
    assert res.returncode == 0, res.stderr
    (metrics_file,) = (tmp_path / "outputs" / "bm25").glob(
        "*/*/metrics.json"
    )  # outputs/<stage>/<date>/<time>/
    assert "ndcg@10" in json.loads(metrics_file.read_text())["test"]
    assert "ndcg@10" in res.stdout  # the table is printed


@requires_scifact()
def test_bm25_scifact_matches_beir(compose, tmp_path):
    cfg = compose("+experiment=scifact_bm25", f"data.root={SCIFACT}", "stage.negatives.enabled=false")
    run_stage(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["test"]["num_queries"] == 300
    assert metrics["test"]["ndcg@10"] >= 0.64  # BEIR reports 0.665 for BM25
