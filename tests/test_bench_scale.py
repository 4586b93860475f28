"""The scale benchmark's simulation: planted neighbours are where they should be, and a small run prints
its tables with exhaustive indexes at recall 1."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import bench_scale, common
from benchmarks.bench_scale import PLANTED, SIMILARITY, PlantedCorpus


def test_planted_neighbours_are_the_queries_nearest():
    dim = 256
    corpus = PlantedCorpus(4000, dim, 5, seed=1)
    emb = np.concatenate([corpus.shard(a, min(a + 1500, 4000)) for a in range(0, 4000, 1500)])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cosines = np.sum(emb[corpus.rows] * corpus.centres[np.arange(len(corpus.rows)) // PLANTED], axis=1)
    # the drawn cosine, give or take the random part's own projection on the centre (~1/sqrt(dim))
    assert np.abs(cosines - corpus.cosines).max() < 5 / np.sqrt(dim)
    assert SIMILARITY[0] <= corpus.cosines.min() and corpus.cosines.max() <= SIMILARITY[1]
    top = np.argsort(-(corpus.queries @ emb.T), axis=1)[:, :100]
    for i, rows in enumerate(top):
        assert np.isin(rows, corpus.rows[i * PLANTED : (i + 1) * PLANTED]).mean() > 0.9
    again = PlantedCorpus(4000, dim, 5, seed=1)
    np.testing.assert_array_equal(again.shard(1500, 3000), emb[1500:3000])  # seeded per shard


def test_a_small_run_prints_its_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(bench_scale, "SHARD", 2000)
    bench_scale.main(
        [
            *(
                "--n",
                "6000",
                "--dim",
                "16",
                "--queries",
                "10",
                "--workdir",
                str(tmp_path / "work"),
                "--skip-rss",
            ),
            *("--factories", "Flat;IVF16,Flat@nprobe=16;IVF16,Flat@nprobe=1"),
        ]
    )
    out = capsys.readouterr().out
    assert "== scale_6k ==" in out and "== scale_10m_6k ==" in out
    rows = json.loads((tmp_path / "results" / "scale_6k.json").read_text())["rows"]
    by_method = {(r["method"], r["params"]): r for r in rows}
    assert by_method[("Flat", "")]["recall@100"] == 1.0
    assert by_method[("IVF16,Flat", "nprobe=16")]["recall@100"] == 1.0  # every list: exhaustive
    assert by_method[("IVF16,Flat", "nprobe=1")]["recall@100"] < 1.0

    # one peak-RSS measurement, in its own process as the benchmark takes it
    queries = tmp_path / "queries.npy"
    np.save(queries, np.ones((3, 16), dtype=np.float32))
    got = bench_scale._measure_rss(tmp_path / "work" / "embeddings", queries, "mmap", 2)
    assert got["peak_rss_mb"] >= got["start_rss_mb"] > 0 and got["seconds"] > 0
