"""The benchmark modules import; their pure helpers (CPU path, peak FLOP/s, FLOP estimate, data) are right.

No timing is asserted: the benchmarks themselves run with `python -m benchmarks <name>`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from benchmarks.__main__ import available
from benchmarks.common import RESULT_PREFIX, child_result, passage_string, training_groups
from benchmarks.cpu import (
    cpu_flags,
    cpu_mhz,
    cpu_path,
    cpu_path_label,
    encoder_flops,
    peak_from_flags,
)

NEW = ["st_train", "grad_cache", "st_encode", "pipeline"]


@pytest.mark.parametrize("name", NEW)
def test_new_benchmarks_are_listed_and_import(name):
    assert name in available()
    module = importlib.import_module(f"benchmarks.bench_{name}")
    assert callable(module.main)


def test_cpu_path_label_names_the_path():
    assert cpu_path_label("32-true", "AVX2", native_bf16=False) == "fp32 (AVX2 only: no native bf16)"
    assert cpu_path_label("bf16-mixed", "AVX512", native_bf16=True) == "bf16-mixed (native bf16, AVX512)"
    assert "not used" in cpu_path_label("32-true", "AVX512", native_bf16=True)
    assert "emulated" in cpu_path_label("bf16-mixed", "AVX2", native_bf16=False)


def test_cpu_path_follows_simlm_precision_auto():
    from simlm.runtime import cpu_has_native_bf16

    precision, label = cpu_path("auto")
    assert precision == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    assert label.startswith("bf16-mixed" if precision == "bf16-mixed" else "fp32")
    assert cpu_path("32-true")[0] == "32-true"


CPUINFO = """processor\t: 0
model name\t: AMD EPYC
cpu MHz\t\t: 2445.406
flags\t\t: fpu sse2 avx fma avx2 bmi2
processor\t: 1
cpu MHz\t\t: 2500.000
flags\t\t: fpu sse2 avx fma avx2 bmi2
"""


def test_cpuinfo_parsing():
    assert cpu_flags(CPUINFO) == {"fpu", "sse2", "avx", "fma", "avx2", "bmi2"}
    assert cpu_mhz(CPUINFO) == 2500.0
    assert cpu_flags("no flags here") == set()


def test_peak_from_flags():
    avx2 = peak_from_flags({"avx", "avx2", "fma"}, cores=2, ghz=2.5)
    assert avx2.fp32_flop_per_cycle == 32  # 8 fp32 lanes x 2 (FMA) x 2 units
    assert avx2.fp32_gflops == pytest.approx(160.0)
    assert avx2.bf16_gflops == avx2.fp32_gflops
    avx512 = peak_from_flags({"avx2", "fma", "avx512f", "avx512_bf16"}, cores=2, ghz=2.5, fma_units=2)
    assert avx512.fp32_gflops == pytest.approx(320.0)
    assert avx512.gflops("bf16-mixed") == pytest.approx(640.0)
    assert avx512.gflops("32-true") == pytest.approx(320.0)
    assert "FMA units" in avx2.describe()
    amx = peak_from_flags({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}, cores=2, ghz=2.5)
    assert amx.fp32_gflops == pytest.approx(320.0)
    assert amx.gflops("bf16-mixed") == pytest.approx(2 * 2.5 * 1024)  # the tiles, not the vector units
    assert "AMX" in amx.describe() and "AMX" not in avx512.describe()


def test_encoder_flops_by_hand():
    # 1 layer, hidden 2, intermediate 4: 4*2*2 + 2*2*4 = 32 matmul weights; 3 tokens:
    # 2 * 3 * 32 (matmuls) + 4 * 3 * 3 * 2 (attention) = 264
    assert encoder_flops([3], layers=1, hidden=2, intermediate=4) == 264
    assert encoder_flops([3], layers=1, hidden=2, intermediate=4, backward=True) == 3 * 264
    assert encoder_flops([3, 3], layers=2, hidden=2, intermediate=4) == 4 * 264
    # MiniLM (6 x 384, 1536) at 256 tokens: about 23.6 MFLOP per token
    per_token = encoder_flops([256], layers=6, hidden=384, intermediate=1536) / 256
    assert per_token == pytest.approx(2 * 6 * (4 * 384**2 + 2 * 384 * 1536) + 6 * 4 * 256 * 384)
    assert 23e6 < per_token < 24e6


def test_encoder_shape_reads_bert_config():
    from transformers import BertConfig

    from benchmarks.cpu import encoder_shape

    shape = encoder_shape(BertConfig(num_hidden_layers=6, hidden_size=384, intermediate_size=1536))
    assert shape == {"layers": 6, "hidden": 384, "intermediate": 1536}


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"t{i}" if i % 2 else "", "text": f"text {i}"} for i in range(8)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(3)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td1\t1\nq0\td2\t1\nq1\td3\t1\nq2\td4\t1\nq2\td5\t0\n"
    )
    return root


def test_training_groups_positive_first_negatives_unjudged(tmp_path):
    groups = training_groups(_beir(tmp_path), n_groups=5, group_size=3)
    assert len(groups) == 5  # 3 queries, reused
    positives = {"query 0": "text 1", "query 1": "text 3", "query 2": "text 4"}
    judged_texts = {"query 0": {"text 1", "text 2"}, "query 1": {"text 3"}, "query 2": {"text 4", "text 5"}}
    for g in groups:
        assert len(g["titles"]) == len(g["texts"]) == len(g["scores"]) == 3
        assert g["texts"][0] == positives[g["query"]]
        assert len(set(g["texts"])) == 3
        assert not set(g["texts"][1:]) & judged_texts[g["query"]]
    assert {g["query"] for g in groups} == set(positives)
    assert training_groups(tmp_path, 5, 3) == groups  # seeded


def test_passage_string_matches_simlm_concat_format():
    assert passage_string("Title", "text") == "Title text"
    assert passage_string("", "text") == "text"


def test_child_result_line(capsys):
    child_result({"times": [1.0]})
    line = capsys.readouterr().out.strip()
    assert line.startswith(RESULT_PREFIX)
    payload = json.loads(line[len(RESULT_PREFIX) :])
    assert payload["times"] == [1.0] and payload["peak_rss_mb"] > 0


def test_grad_cache_support_probe():
    from benchmarks.bench_grad_cache import grad_cache_supported

    assert isinstance(grad_cache_supported(), bool)


def test_st_train_rows_and_settings():
    from benchmarks.bench_st_train import REFERENCE, ROWS, batches, simlm_settings

    assert REFERENCE in ROWS
    assert {r.library for r in ROWS.values()} == {"st", "simlm"}
    assert ROWS["simlm"].attention_dropout == 0.0 and ROWS["simlm_ckpt_dropout"].attention_dropout is None
    assert simlm_settings(256)["passage_format"] == "concat"
    assert [len(b) for b in batches(list(range(7)), 3)] == [3, 3]


def test_st_train_row_lists_default_to_all_and_refuse_unknown_rows(monkeypatch):
    from benchmarks.bench_st_train import ROWS, row_keys

    monkeypatch.delenv("SIMLM_BENCH_QUALITY_ROWS", raising=False)
    assert row_keys("SIMLM_BENCH_QUALITY_ROWS", list(ROWS)) == list(ROWS)
    monkeypatch.setenv("SIMLM_BENCH_QUALITY_ROWS", " simlm, ")
    assert row_keys("SIMLM_BENCH_QUALITY_ROWS", list(ROWS)) == ["simlm"]
    monkeypatch.setenv("SIMLM_BENCH_QUALITY_ROWS", "simlm,st_mnrl")
    with pytest.raises(ValueError, match=r"SIMLM_BENCH_QUALITY_ROWS: unknown rows \['st_mnrl'\]"):
        row_keys("SIMLM_BENCH_QUALITY_ROWS", ["simlm"])


def test_pipeline_probe_texts_are_seeded_title_text_passages(tmp_path):
    from benchmarks.bench_pipeline import probe_texts

    root = _beir(tmp_path)
    texts = probe_texts(root, n=20)
    assert len(texts) == 20 and texts == probe_texts(root, n=20)
    assert set(texts) <= {
        "text 0",
        "t1 text 1",
        "text 2",
        "t3 text 3",
        "text 4",
        "t5 text 5",
        "text 6",
        "t7 text 7",
    }
    assert len(set(texts)) > 1 and probe_texts(root, n=20, seed=1) != texts


def test_pipeline_rows_count_the_job_in_median_reference_steps():
    from benchmarks.bench_pipeline import pipeline_rows

    job = {"seconds": 120.0, "peak_rss_mb": 2048.0, "steps": {"bm25": 3.0, "retriever1": 60.0, "rlm": None}}
    rows = pipeline_rows(job, before=[2.0, 4.0, 9.0], after=[3.0, 3.0, 2.0])  # median 3.0
    assert [r["what"] for r in rows] == ["step bm25", "step retriever1", "step rlm", "whole job"]
    assert rows[0]["reference_steps"] == pytest.approx(1.0)
    assert rows[1]["reference_steps"] == pytest.approx(20.0)
    assert rows[2]["reference_steps"] is None
    assert rows[3]["reference_steps"] == pytest.approx(40.0) and rows[3]["peak_rss_gb"] == pytest.approx(2.0)


def test_pipeline_benchmark_keeps_only_an_empty_work_dir(tmp_path):
    from benchmarks.bench_pipeline import split_work_dir

    assert split_work_dir(["+experiment=x", "a=1"]) == (["+experiment=x", "a=1"], None)
    fresh = tmp_path / "fresh"
    assert split_work_dir(["+experiment=x", f"stage.work_dir={fresh}"]) == (["+experiment=x"], fresh)
    (fresh / "bm25").mkdir(parents=True)
    with pytest.raises(SystemExit, match="is not empty"):
        split_work_dir([f"stage.work_dir={fresh}"])
