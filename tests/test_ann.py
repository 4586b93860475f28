"""faiss indexes (`stage=index`, `simlm.retrieval.ann`): exhaustive settings give exact search, builds are
seeded and shard by shard, and a folder that does not match its embeddings, corpus or encoder fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simlm.retrieval import ann
from simlm.retrieval.ann import (
    FaissIndex,
    IndexMismatchError,
    build_index,
    check_index_source,
    read_index_manifest,
    training_sample,
)
from simlm.retrieval.index import ExactSearch
from simlm.retrieval.store import EmbeddingMismatchError, manifest_sha256, read_manifest, write_embeddings
from simlm.stages import run_stage

N, DIM, K = 600, 16, 10


def random_unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return random_unit(rng, N), random_unit(rng, 25)


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory, vectors) -> Path:
    out = tmp_path_factory.mktemp("emb")
    write_embeddings(out, vectors[0], N, shard_size=250, dtype="float32", model="random")
    return out


@pytest.fixture(scope="module")
def exact(emb_dir, vectors) -> tuple[np.ndarray, np.ndarray]:
    return ExactSearch(emb_dir).search(vectors[1], K)


# (factory, search parameters that make it exhaustive on 600 vectors)
EXHAUSTIVE = [
    ("Flat", {}),
    ("HNSW16", {"efSearch": N}),
    ("IVF8,Flat", {"nprobe": 8}),
    # 4-bit PQ: faiss trains 8-bit codebooks (256 centroids) for tens of seconds even on tiny data
    ("IVF8,PQ4x4,RFlat", {"nprobe": 8, "k_factor": N // K}),
    ("IVF8_HNSW16,PQ4x4,RFlat", {"nprobe": 8, "quantizer_efSearch": 16, "k_factor": N // K}),
]


@pytest.mark.parametrize(("factory", "params"), EXHAUSTIVE, ids=[f for f, _ in EXHAUSTIVE])
def test_an_index_with_exhaustive_settings_returns_the_exact_results(
    tmp_path, emb_dir, vectors, exact, factory, params
):
    manifest = build_index(emb_dir, tmp_path / "index", factory, train_size=N, seed=1, add_batch_size=100)
    assert (manifest["factory"], manifest["metric"], manifest["dim"], manifest["count"]) == (
        factory,
        "inner_product",
        DIM,
        N,
    )
    assert manifest["source"]["manifest_sha256"] == manifest_sha256(emb_dir)
    index = FaissIndex(tmp_path / "index", corpus_size=N)
    index.set_params(params)
    scores, rows = index.search(vectors[1], K, batch_size=7)
    np.testing.assert_array_equal(rows, exact[1])
    np.testing.assert_allclose(scores, exact[0], atol=1e-5)
    assert not list((tmp_path / "index").glob(".*tmp"))  # atomic writes leave no temp files


def test_an_approximate_index_pads_what_it_does_not_find_and_orders_ties_by_row(tmp_path, emb_dir, vectors):
    build_index(emb_dir, tmp_path / "ivf", "IVF8,Flat", train_size=N, seed=1)
    index = FaissIndex(tmp_path / "ivf")
    index.set_params({"nprobe": 1})
    scores, rows = index.search(vectors[1], N)  # one list of 8 cannot hold every vector
    assert ((rows == -1) == np.isneginf(scores)).all() and (rows == -1).any()
    found = rows >= 0
    assert all(len(set(r[f])) == f.sum() for r, f in zip(rows, found))
    assert all((np.diff(s[f]) <= 0).all() for s, f in zip(scores, found))

    # 0/0.5 vectors score exactly in float32 whatever the summation order, so ties are real ties;
    # every passage twice: tied pairs must come out lower row first, as exact search orders them
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, size=(50, DIM)).astype(np.float32) / 2
    queries = rng.integers(0, 2, size=(25, DIM)).astype(np.float32) / 2
    tied = tmp_path / "tied"
    write_embeddings(tied, np.concatenate([base, base]), 100, shard_size=40, dtype="float32")
    build_index(tied, tmp_path / "tied-index", "HNSW8")
    index = FaissIndex(tmp_path / "tied-index")
    index.set_params({"efSearch": 100})
    scores, rows = index.search(queries, 6)
    exact_scores, exact_rows = ExactSearch(tied).search(queries, 6)
    np.testing.assert_array_equal(scores, exact_scores)
    np.testing.assert_array_equal(rows, exact_rows)


def test_training_reads_a_seeded_sample_and_vectors_are_added_block_by_block(
    tmp_path, emb_dir, vectors, monkeypatch
):
    manifest = read_manifest(emb_dir)
    sample, positions = training_sample(emb_dir, manifest, 100, seed=3)
    np.testing.assert_array_equal(sample, vectors[0][positions])
    assert len(set(positions.tolist())) == 100 and positions.max() >= 250  # drawn across the shards
    assert (training_sample(emb_dir, manifest, 100, seed=3)[1] == positions).all()
    assert (training_sample(emb_dir, manifest, 100, seed=4)[1] != positions).any()

    calls: list[list[int]] = []  # block lengths read by each iter_blocks call of the build
    real_iter_blocks = ann.iter_blocks

    def recording_iter_blocks(*args, **kwargs):
        calls.append([])
        for rows, emb in real_iter_blocks(*args, **kwargs):
            calls[-1].append(len(rows))
            yield rows, emb

    monkeypatch.setattr(ann, "iter_blocks", recording_iter_blocks)
    m = build_index(emb_dir, tmp_path / "index", "IVF4,Flat", train_size=120, seed=5, add_batch_size=100)
    assert m["trained_on"] == 120 and m["seed"] == 5
    # the sample's shards (memory-mapped, only drawn rows read), then the vectors in blocks of <= 100
    assert calls == [[250, 250, 100], [100, 100, 50, 100, 100, 50, 100]]
    same = build_index(emb_dir, tmp_path / "again", "IVF4,Flat", train_size=120, seed=5, add_batch_size=100)
    assert (tmp_path / "again" / "index.faiss").read_bytes() == (
        tmp_path / "index" / "index.faiss"
    ).read_bytes()
    assert same["source"] == m["source"]


def test_the_default_training_sample_follows_the_number_of_lists():
    import faiss

    assert ann.default_train_size(faiss.index_factory(8, "IVF4096,Flat"), 10**7) == 64 * 4096
    assert ann.default_train_size(faiss.index_factory(8, "IVF16,Flat"), 10**7) == ann.MIN_TRAIN_SIZE
    assert ann.default_train_size(faiss.index_factory(8, "IVF16,Flat"), 5000) == 5000


def test_bad_factories_parameters_and_folders_fail_clearly(tmp_path, emb_dir, vectors):
    with pytest.raises(
        ValueError, match=r"stage.factory 'IVFbad' is not a faiss index-factory string.*parse"
    ):
        build_index(emb_dir, tmp_path / "x", "IVFbad")
    with pytest.raises(ValueError, match=r"stage.factory 'PQ5'.*multiple"):
        build_index(emb_dir, tmp_path / "x", "PQ5")
    build_index(emb_dir, tmp_path / "hnsw", "HNSW8")
    index = FaissIndex(tmp_path / "hnsw")
    with pytest.raises(
        ValueError, match=r"stage.nprobe: the 'HNSW8' index .* has no search parameter 'nprobe'"
    ):
        index.set_params({"nprobe": 4})

    with pytest.raises(FileNotFoundError, match="build the index first"):
        read_index_manifest(tmp_path / "nothing")
    with pytest.raises(IndexMismatchError, match="not a faiss index manifest .*stage.embeddings_dir"):
        read_index_manifest(emb_dir)
    with pytest.raises(
        IndexMismatchError, match=r"field 'count': an index of 600 passages, but the corpus has 599"
    ):
        FaissIndex(tmp_path / "hnsw", corpus_size=599)

    other = tmp_path / "other-emb"
    write_embeddings(other, vectors[0][::-1].copy(), N, shard_size=250, dtype="float32")
    with pytest.raises(
        IndexMismatchError, match=r"field 'source.manifest_sha256': the index was built from other"
    ):
        check_index_source(read_index_manifest(tmp_path / "hnsw"), other, tmp_path / "hnsw")

    broken = tmp_path / "broken"  # a rebuild interrupted after index.faiss was replaced
    build_index(emb_dir, broken, "Flat")
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(IndexMismatchError, match=r"index.faiss: 12 bytes, but .* field 'index_bytes'"):
        FaissIndex(broken)
    manifest["index_bytes"] = 12
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="index.faiss: not a readable faiss index"):
        FaissIndex(broken)

    with pytest.raises(ValueError, match="IVFbad"):
        build_index(emb_dir, broken, "IVFbad")
    assert (broken / "manifest.json").exists()  # a bad factory fails before anything is touched


# ------------------------------------------------------------------ the stages
def test_encode_index_search_stages_equal_exact_search_and_check_the_model(
    compose, tmp_path, small_beir, tiny_bert
):
    common = ("data=beir", f"data.root={small_beir}", f"model.name_or_path={tiny_bert}", "model.pooling=mean")
    enc = compose(
        "stage=encode", *common, "stage.shard_size=100", "stage.dtype=float32", output_dir=tmp_path / "enc"
    )
    run_stage(enc)
    emb = enc.stage.out_dir
    index_cfg = compose(
        "stage=index", f"stage.embeddings_dir={emb}", "stage.factory='IVF4,Flat'", output_dir=tmp_path / "idx"
    )
    run_stage(index_cfg)
    index_dir = tmp_path / "idx" / "index"
    metrics = json.loads((tmp_path / "idx" / "metrics.json").read_text())["index"]
    assert metrics["vectors"] == read_manifest(emb)["corpus_size"] and metrics["dim"] == 32

    def search(name, *extra):
        run_stage(compose("stage=search", *common, "stage.top_k=20", *extra, output_dir=tmp_path / name))
        return (tmp_path / name / "test.trec").read_text()

    exact = search("exact", f"stage.embeddings_dir={emb}")
    assert search("ivf", f"stage.index_dir={index_dir}", "stage.nprobe=4") == exact
    assert (
        search("ivf-checked", f"stage.index_dir={index_dir}", f"stage.embeddings_dir={emb}", "stage.nprobe=4")
        == exact
    )

    with pytest.raises(EmbeddingMismatchError, match="settings differ .*pooling"):
        run_stage(
            compose(
                "stage=search",
                "data=beir",
                f"data.root={small_beir}",
                f"model.name_or_path={tiny_bert}",
                "model.pooling=cls",
                f"stage.index_dir={index_dir}",
                output_dir=tmp_path / "cls",
            )
        )
    assert not (tmp_path / "cls" / "test.trec").exists()
    with pytest.raises(ValueError, match="stage=index needs stage.embeddings_dir"):
        run_stage(compose("stage=index", output_dir=tmp_path / "none"))
