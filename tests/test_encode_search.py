"""Dense encoding and exact search: the encode/search stages end to end, sharding, resume, tie-breaking."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from simlm.data.corpus import Corpus, Passage
from simlm.data.formats import read_run
from simlm.models.encoder import (
    SETTINGS_FILE,
    TextEncoder,
    load_encoder,
    load_tokenizer,
    tokenize_passages,
    tokenize_queries,
)
from simlm.retrieval import index as index_module
from simlm.retrieval.encoding import encode_texts
from simlm.retrieval.index import search, to_run
from simlm.retrieval.store import EmbeddingMismatchError, encode_corpus_to_shards, load_shards, read_manifest
from simlm.stages import run_stage

N_PASSAGES = 300


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine every op of the
    thread pool waits for a scheduler slice (10-50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_beir(tmp_path_factory, demo_root) -> Path:
    """A 300-passage BEIR data set cut from the demo set: judged test/dev passages first, every 7th untitled."""
    root = tmp_path_factory.mktemp("small-beir")
    docs = [json.loads(line) for line in (demo_root / "corpus.jsonl").read_text().splitlines()]
    qrels = {
        split: [
            line.split("\t") for line in (demo_root / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        ]
        for split in ("test", "dev")
    }
    judged = [d for split in ("test", "dev") for _, d, _ in qrels[split][:40]]
    keep = list(dict.fromkeys(judged + [d["_id"] for d in docs]))[:N_PASSAGES]
    by_id = {d["_id"]: d for d in docs}
    with open(root / "corpus.jsonl", "w") as f:
        for i, doc_id in enumerate(keep):
            doc = dict(by_id[doc_id], title="" if i % 7 == 3 else by_id[doc_id]["title"])
            f.write(json.dumps(doc) + "\n")
    (root / "qrels").mkdir()
    kept, qids = set(keep), set()
    for split, lines in qrels.items():
        judged_lines = [line for line in lines if line[1] in kept]
        qids |= {q for q, _, _ in judged_lines}
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join("\t".join(line) + "\n" for line in judged_lines)
        )
    with open(root / "queries.jsonl", "w") as f:
        for line in (demo_root / "queries.jsonl").read_text().splitlines():
            if json.loads(line)["_id"] in qids:
                f.write(line + "\n")
    return root


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    """The tiny BERT as `(TextEncoder, tokenizer)` through `load_encoder`."""
    return load_encoder(
        {"name_or_path": str(tiny_bert), "pooling": "cls", "l2_normalize": True, "p_max_len": 144}
    )


def corpus_passages(root: Path) -> list[Passage]:
    return [
        Passage(d["_id"], d.get("title", ""), d["text"])
        for d in map(json.loads, (root / "corpus.jsonl").read_text().splitlines())
    ]


def direct_passage_embeddings(encoder, tokenizer, passages: list[Passage], batch: int = 16) -> np.ndarray:
    """Reference: plain `TextEncoder.encode` on padded batches in corpus order."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(passages), batch):
            chunk = passages[i : i + batch]
            tokens = tokenize_passages(
                tokenizer, [p.title for p in chunk], [p.text for p in chunk], encoder.settings
            )
            out.append(encoder.encode(dict(tokens), is_query=False).numpy())
    return np.concatenate(out)


def assemble(emb_dir: Path) -> np.ndarray:
    parts = list(load_shards(emb_dir))
    rows = np.concatenate([r for r, _ in parts])
    emb = np.concatenate([e for _, e in parts])
    assert sorted(rows.tolist()) == list(range(len(rows)))
    out = np.empty_like(emb)
    out[rows] = emb
    return out


def brute_force(
    queries: np.ndarray, emb: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Oracle: full scores, ordered by (-score, row)."""
    scores = queries.astype(np.float32) @ emb.astype(np.float32).T
    order = np.stack([np.lexsort((rows, -s))[:k] for s in scores])
    return np.take_along_axis(scores, order, 1), rows[order]


class CountingEncode:
    """Wraps `encoder.encode` to count encoded rows per call, optionally raising at the `fail_at`-th call."""

    def __init__(self, encoder, fail_at: int | None = None) -> None:
        self.inner = encoder.encode
        self.fail_at = fail_at
        self.batch_sizes: list[int] = []
        self.batch_lengths: list[tuple[int, int]] = []  # (padded length, real tokens)
        encoder.encode = self

    def __call__(self, batch, is_query):
        if self.fail_at is not None and len(self.batch_sizes) + 1 == self.fail_at:
            raise RuntimeError("simulated interruption")
        mask = batch["attention_mask"]
        self.batch_sizes.append(mask.shape[0])
        self.batch_lengths.append((mask.shape[0] * mask.shape[1], int(mask.sum())))
        return self.inner(batch, is_query)


# --------------------------------------------------------------------------- in-memory encoding
def test_encode_texts_is_length_sorted_and_restores_input_order(tiny):
    encoder, tokenizer = tiny
    words = [
        "the",
        "json",
        "module",
        "encodes",
        "python",
        "objects",
        "as",
        "text",
        "and",
        "decodes",
        "them",
        "again",
    ]
    texts = [" ".join(words[: 1 + (i * 7) % len(words)] * (1 + i % 4)) for i in range(40)]
    titles = [f"title {i}" if i % 3 else "" for i in range(40)]
    encoder.train()  # the caller's mode must survive (a training callback calls this)
    counter = CountingEncode(encoder)
    try:
        got = encode_texts(encoder, tokenizer, titles=titles, texts=texts, batch_size=7)
    finally:
        del encoder.encode
    assert encoder.training
    encoder.eval()
    with torch.no_grad():  # one passage at a time: no padding at all
        expected = np.concatenate(
            [
                encoder.encode(
                    dict(tokenize_passages(tokenizer, [t], [x], encoder.settings)), is_query=False
                ).numpy()
                for t, x in zip(titles, texts)
            ]
        )
    assert got.dtype == np.float32 and got.shape == (40, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # longest first, so little padding: far less than batching in input order would need
    padded, real = map(sum, zip(*counter.batch_lengths))
    unsorted_padding = 0
    for i in range(0, 40, 7):
        lengths = [
            len(ids)
            for ids in tokenize_passages(
                tokenizer, titles[i : i + 7], texts[i : i + 7], encoder.settings, pad=False
            )["input_ids"]
        ]
        unsorted_padding += max(lengths) * len(lengths) - sum(lengths)
    assert padded - real < unsorted_padding / 2

    queries = texts[:9]
    got_q = encode_texts(encoder, tokenizer, queries=queries, batch_size=4)
    with torch.no_grad():
        expected_q = encoder.encode(
            dict(tokenize_queries(tokenizer, queries, encoder.settings)), is_query=True
        ).numpy()
    np.testing.assert_allclose(got_q, expected_q, atol=1e-5)
    assert encode_texts(encoder, tokenizer, queries=[]).shape == (0, 32)


# --------------------------------------------------------------------------- encode stage
@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-5), ("float16", 1e-3)])
def test_encode_stage_writes_shards_and_manifest_equal_to_direct_encoding(
    compose, tmp_path, small_beir, tiny_bert, tiny, dtype, atol
):
    cfg = compose(
        "stage=encode",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        "stage.shard_size=128",
        "stage.batch_size=32",
        f"stage.dtype={dtype}",
    )
    run_stage(cfg)
    emb_dir = Path(cfg.stage.out_dir)
    assert emb_dir == tmp_path / "run" / "embeddings"
    manifest = read_manifest(emb_dir, corpus_size=N_PASSAGES)
    assert manifest["dim"] == 32 and manifest["dtype"] == dtype and manifest["model"] == str(tiny_bert)
    assert [(s["start"], s["end"]) for s in manifest["shards"]] == [(0, 128), (128, 256), (256, 300)]
    assert all(e.dtype == np.dtype(dtype) for _, e in load_shards(emb_dir))
    encoder, tokenizer = tiny
    expected = direct_passage_embeddings(encoder, tokenizer, corpus_passages(small_beir))
    np.testing.assert_allclose(assemble(emb_dir).astype(np.float32), expected, atol=atol)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["encode"]["passages"] == metrics["encode"]["encoded"] == N_PASSAGES
    with pytest.raises(EmbeddingMismatchError, match="300-passage corpus, but the corpus has 299"):
        read_manifest(emb_dir, corpus_size=299)


def test_rerunning_encode_without_out_dir_resumes_in_one_folder_per_model_and_data(
    compose, tmp_path, small_beir, tiny_bert, caplog
):
    """Two plain runs (two timestamped run dirs, no stage.out_dir) share one shard folder: the second
    encodes nothing; an interrupted run resumes; other settings get their own folder; an explicit
    stage.out_dir is written in place."""
    import logging

    store = tmp_path / "store"
    common = (
        "stage=encode",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        "stage.shard_size=128",
        "stage.dtype=float32",
        f"stage.store_dir={store}",
    )

    def encode(name, *extra):
        with caplog.at_level(logging.INFO, logger="simlm"):
            caplog.clear()
            run_stage(compose(*common, *extra, output_dir=tmp_path / name))
        return json.loads((tmp_path / name / "metrics.json").read_text())["encode"]

    first = encode("run1")
    assert (first["encoded"], first["skipped"]) == (N_PASSAGES, 0)
    link = tmp_path / "run1" / "embeddings"
    folder = link.resolve()
    assert (
        link.is_symlink() and folder.parent == store / "beir" and folder.name.startswith(tiny_bert.name + "-")
    )
    assert read_manifest(link, corpus_size=N_PASSAGES)["dim"] == 32  # stage=search reads the run dir's link

    second = encode("run2")
    assert (second["encoded"], second["skipped"]) == (0, 3)
    assert (tmp_path / "run2" / "embeddings").resolve() == folder
    assert "3 of 3 shards already encoded and reused (0-2), 0 encoded now" in caplog.text

    (folder / "emb_r0_s2.npy").unlink()  # an interrupted run: the last shard and the manifest missing
    (folder / "manifest.json").unlink()
    third = encode("run3")
    assert (third["encoded"], third["skipped"]) == (N_PASSAGES - 256, 2)
    assert "2 of 3 shards already encoded and reused (0-1), 1 encoded now (44 passages)" in caplog.text
    assert read_manifest(tmp_path / "run3" / "embeddings", corpus_size=N_PASSAGES)

    other = encode("run4", "model.pooling=mean")  # other vectors: another folder, nothing reused
    assert (other["encoded"], other["skipped"]) == (N_PASSAGES, 0)
    assert (tmp_path / "run4" / "embeddings").resolve() not in (folder, store)

    explicit = tmp_path / "my-embeddings"
    assert encode("run5", f"stage.out_dir={explicit}")["encoded"] == N_PASSAGES
    assert (explicit / "manifest.json").is_file() and not explicit.is_symlink()
    assert not (tmp_path / "run5" / "embeddings").exists()


def test_interrupted_encode_resumes_without_recomputing_finished_shards(tmp_path, small_beir, tiny):
    encoder, tokenizer = tiny
    corpus = Corpus.from_passages(corpus_passages(small_beir))
    out = tmp_path / "emb"
    kwargs = {"shard_size": 100, "batch_size": 50, "dtype": "float32"}
    # call 1 is the probe passage, calls 2-5 shards 0 and 1: fail on shard 2's first batch
    counter = CountingEncode(encoder, fail_at=6)
    try:
        with pytest.raises(RuntimeError, match="simulated interruption"):
            encode_corpus_to_shards(encoder, tokenizer, corpus, out, **kwargs)
    finally:
        del encoder.encode
    assert counter.batch_sizes == [1, 50, 50, 50, 50]
    assert not (out / "manifest.json").exists() and not (out / "emb_r0_s2.npy").exists()
    finished = {
        name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns)
        for name in ("emb_r0_s0.npy", "rows_r0_s0.npy", "emb_r0_s1.npy", "rows_r0_s1.npy")
    }

    counter = CountingEncode(encoder)
    try:
        summary = encode_corpus_to_shards(encoder, tokenizer, corpus, out, **kwargs)
    finally:
        del encoder.encode
    assert counter.batch_sizes == [1, 50, 50]  # the probe, then shard 2 only
    assert (
        summary.skipped_shards == [0, 1] and summary.encoded_shards == [2] and summary.encoded_passages == 100
    )
    assert {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in finished} == finished
    assert summary.manifest == out / "manifest.json"
    expected = direct_passage_embeddings(encoder, tokenizer, corpus_passages(small_beir))
    np.testing.assert_allclose(assemble(out), expected, atol=1e-5)
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_resume_into_a_folder_of_another_model_fails(tmp_path, tiny_bert, tiny):
    encoder, tokenizer = tiny
    corpus = Corpus.from_passages([Passage(str(i), "", f"passage number {i}") for i in range(20)])
    encode_corpus_to_shards(encoder, tokenizer, corpus, tmp_path, shard_size=8, dtype="float32")
    other, _ = load_encoder({"name_or_path": str(tiny_bert)})
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    with pytest.raises(EmbeddingMismatchError, match="probe"):
        encode_corpus_to_shards(other, tokenizer, corpus, tmp_path, shard_size=8, dtype="float32")
    with pytest.raises(EmbeddingMismatchError, match="shard_size"):
        encode_corpus_to_shards(encoder, tokenizer, corpus, tmp_path, shard_size=5, dtype="float32")


def test_multi_rank_slices_are_contiguous_and_rank_0_writes_the_manifest_last(tmp_path, tiny):
    encoder, tokenizer = tiny
    corpus = Corpus.from_passages([Passage(f"d{i}", "t", f"passage {i} " * (i % 5 + 1)) for i in range(25)])
    first = encode_corpus_to_shards(encoder, tokenizer, corpus, tmp_path, shard_size=5, rank=0, world_size=2)
    assert first.manifest is None  # rank 1's shards are missing
    encode_corpus_to_shards(encoder, tokenizer, corpus, tmp_path, shard_size=5, rank=1, world_size=2)
    final = encode_corpus_to_shards(encoder, tokenizer, corpus, tmp_path, shard_size=5, rank=0, world_size=2)
    assert final.encoded_passages == 0 and final.manifest is not None
    manifest = read_manifest(tmp_path, corpus_size=25)
    assert [(s["rank"], s["start"], s["end"]) for s in manifest["shards"]] == [
        (0, 0, 5),
        (0, 5, 10),
        (0, 10, 12),
        (1, 12, 17),
        (1, 17, 22),
        (1, 22, 25),
    ]
    expected = encode_texts(encoder, tokenizer, titles=corpus.titles(), texts=corpus.texts())
    np.testing.assert_allclose(assemble(tmp_path).astype(np.float32), expected, atol=1e-3)


# --------------------------------------------------------------------------- search
def tied_embeddings(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """0/0.5 vectors: inner products are exact in float32, so every backend sees the
    same scores and there are many exact ties, including duplicated passages."""
    emb = rng.integers(0, 2, size=(n, d)).astype(np.float32) / 2
    emb[rng.choice(n, n // 4, replace=False)] = emb[rng.choice(n, n // 4, replace=False)]
    return emb


@pytest.mark.parametrize("data", ["ties", "random"])
def test_backends_and_shardings_agree_with_brute_force(data, monkeypatch):
    rng = np.random.default_rng(0)
    n, d = 1000, 16
    if data == "ties":
        emb, queries = tied_embeddings(rng, n, 8), tied_embeddings(rng, 37, 8)
    else:
        emb = rng.standard_normal((n, d)).astype(np.float32)
        queries = rng.standard_normal((37, d)).astype(np.float32)
    rows = rng.permutation(n).astype(np.int64)  # corpus rows need not follow storage order
    fallbacks = []
    exact = index_module._exact_topk
    monkeypatch.setattr(index_module, "_exact_topk", lambda *a: fallbacks.append(1) or exact(*a))
    full = queries @ emb.T
    row_pos = np.argsort(rows)  # corpus row -> storage position
    for k in (10, 50, 1200):
        ref_scores, ref_rows = brute_force(queries, emb, rows, min(k, n))
        shardings = {"one": [(rows, emb)], "uneven": []}
        for a, b in [(0, 100), (100, 370), (370, 371), (371, 1000)]:
            shardings["uneven"].append((rows[a:b], emb[a:b]))
        for backend in ("faiss", "torch"):
            for name, shards in shardings.items():
                scores, got_rows = search(queries, shards, top_k=k, backend=backend, batch_size=16)
                assert scores.dtype == np.float32 and got_rows.dtype == np.int64
                assert scores.shape == got_rows.shape == (37, k)
                msg = f"{backend}/{name}/k={k}"
                top = got_rows[:, : min(k, n)]
                if data == "ties":  # exact scores: the ranking must be identical, ties by row
                    np.testing.assert_array_equal(top, ref_rows, err_msg=msg)
                else:  # float rounding differs by backend: only near-equal scores may swap places
                    assert (top != ref_rows).mean() < 0.001, msg
                    assert all(len(set(r)) == len(r) for r in top.tolist())
                    np.testing.assert_allclose(
                        full[np.arange(37)[:, None], row_pos[top]], ref_scores, atol=1e-5
                    )
                np.testing.assert_allclose(
                    scores[:, : min(k, n)], ref_scores, rtol=1e-5, atol=1e-5, err_msg=msg
                )
                if k > n:  # fewer passages than k: padded
                    assert (got_rows[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()
    if data == "ties":
        assert fallbacks  # tie groups crossed the fetched depth and were resolved exactly


def test_to_run_maps_rows_to_doc_ids_and_drops_padding():
    corpus = Corpus.from_passages([Passage(f"doc{i}", "", f"text {i}") for i in range(4)])
    scores = np.array([[0.9, 0.5, 0.5, -np.inf], [0.3, 0.2, 0.1, 0.0]], dtype=np.float32)
    rows = np.array([[2, 0, 3, -1], [1, 3, 0, 2]])
    run = to_run(["q1", "q2"], scores, rows, corpus)
    assert run == {
        "q1": [("doc2", pytest.approx(0.9)), ("doc0", 0.5), ("doc3", 0.5)],
        "q2": [
            ("doc1", pytest.approx(0.3)),
            ("doc3", pytest.approx(0.2)),
            ("doc0", pytest.approx(0.1)),
            ("doc2", 0.0),
        ],
    }


def test_encode_then_search_stage_writes_runs_and_metrics(compose, tmp_path, small_beir, tiny_bert, tiny):
    # mean pooling spreads a random model's vectors far more than [CLS] (whose scores all tie near 1)
    common = ("data=beir", f"data.root={small_beir}", f"model.name_or_path={tiny_bert}", "model.pooling=mean")
    encode_cfg = compose(
        "stage=encode", *common, "stage.shard_size=100", "stage.dtype=float32", output_dir=tmp_path / "enc"
    )
    run_stage(encode_cfg)
    cfg = compose(
        "stage=search",
        *common,
        f"stage.embeddings_dir={encode_cfg.stage.out_dir}",
        "stage.split=[test,dev]",
        "stage.top_k=50",
        output_dir=tmp_path / "search",
    )
    run_stage(cfg)
    out = tmp_path / "search"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"test", "dev"}
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0

    encoder, tokenizer = load_encoder({"name_or_path": str(tiny_bert), "pooling": "mean"})
    passages = corpus_passages(small_beir)
    p_emb = direct_passage_embeddings(encoder, tokenizer, passages)
    queries = {
        q["_id"]: q["text"] for q in map(json.loads, (small_beir / "queries.jsonl").read_text().splitlines())
    }
    for split in ("test", "dev"):
        trec, marco = read_run(out / f"{split}.trec"), read_run(out / f"{split}.msmarco.txt")
        qrels_qids = {
            line.split("\t")[0]
            for line in (small_beir / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        }
        assert set(trec) == set(marco) == qrels_qids
        qids = sorted(trec)
        with torch.no_grad():
            q_emb = encoder.encode(
                dict(tokenize_queries(tokenizer, [queries[q] for q in qids], encoder.settings)), is_query=True
            ).numpy()
        ref_scores, ref_rows = brute_force(q_emb, p_emb, np.arange(len(passages)), 50)
        row_of = {p.doc_id: i for i, p in enumerate(passages)}
        for i, qid in enumerate(qids):
            assert [d for d, _ in trec[qid]] == [d for d, _ in marco[qid]]
            got = [row_of[d] for d, _ in trec[qid]]
            # a ranking is right iff each rank holds the oracle's score there; float rounding
            # (length-sorted vs corpus-order batches, faiss vs numpy) may swap near-equal neighbours only
            assert len(set(got)) == len(got) and np.mean(np.array(got) != ref_rows[i]) < 0.1
            np.testing.assert_allclose(q_emb[i] @ p_emb[got].T, ref_scores[i], atol=1e-5)
            np.testing.assert_allclose([s for _, s in trec[qid]], ref_scores[i], atol=2e-6)


def test_search_with_another_model_fails_clearly(compose, tmp_path, small_beir, tiny_bert):
    common = ("data=beir", f"data.root={small_beir}")
    encode_cfg = compose(
        "stage=encode", *common, f"model.name_or_path={tiny_bert}", output_dir=tmp_path / "enc"
    )
    run_stage(encode_cfg)

    wider = tmp_path / "tiny-with-pooler"  # same backbone + a 16-d linear pooler
    shutil.copytree(tiny_bert, wider)
    (wider / SETTINGS_FILE).write_text(json.dumps({"pooling": "cls", "add_pooler": True, "pooler_dim": 16}))
    perturbed = tmp_path / "tiny-perturbed"  # same dimension, other weights
    other = TextEncoder.from_pretrained(tiny_bert)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    other.save_pretrained(perturbed, load_tokenizer(tiny_bert))

    cases = [
        ("wider", [f"model.name_or_path={wider}"], "dimension 32 .* produces 16"),
        ("perturbed", [f"model.name_or_path={perturbed}"], "probe passage embeds differently"),
        ("mean", [f"model.name_or_path={tiny_bert}", "model.pooling=mean"], "settings differ .*pooling"),
    ]
    for name, overrides, match in cases:
        cfg = compose(
            "stage=search",
            *common,
            *overrides,
            f"stage.embeddings_dir={encode_cfg.stage.out_dir}",
            output_dir=tmp_path / f"search-{name}",
        )
        with pytest.raises(EmbeddingMismatchError, match=match):
            run_stage(cfg)
        assert not (tmp_path / f"search-{name}" / "test.trec").exists()
    # the same model with another query length is fine (a warning only)
    cfg = compose(
        "stage=search",
        *common,
        f"model.name_or_path={tiny_bert}",
        "model.q_max_len=16",
        f"stage.embeddings_dir={encode_cfg.stage.out_dir}",
        output_dir=tmp_path / "search-same",
    )
    run_stage(cfg)
    assert (tmp_path / "search-same" / "test.trec").exists()


def test_load_encoder_saved_settings_win_unless_overridden(tmp_path, tiny_bert):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    plain, _ = load_encoder({"name_or_path": str(folder), "pooling": "mean", "q_max_len": 16})
    assert plain.settings.pooling == "mean" and plain.settings.q_max_len == 16  # no saved settings: config
    (folder / SETTINGS_FILE).write_text(json.dumps({"pooling": "cls", "q_max_len": 24}))
    saved, _ = load_encoder({"name_or_path": str(folder), "pooling": "mean", "q_max_len": 16})
    assert saved.settings.pooling == "cls" and saved.settings.q_max_len == 24
    forced, _ = load_encoder(
        {"name_or_path": str(folder), "pooling": "mean", "q_max_len": 16, "override_saved_settings": True}
    )
    assert forced.settings.pooling == "mean" and forced.settings.q_max_len == 16


def test_search_without_embeddings_encodes_in_memory(compose, tmp_path, small_beir, tiny_bert):
    """`stage.embeddings_dir=null` (zero-shot checks) gives the metrics of encode -> search."""
    common = ("data=beir", f"data.root={small_beir}", f"model.name_or_path={tiny_bert}", "model.pooling=mean")
    encode_cfg = compose("stage=encode", *common, "stage.dtype=float32", output_dir=tmp_path / "enc")
    run_stage(encode_cfg)
    run_stage(
        compose(
            "stage=search",
            *common,
            f"stage.embeddings_dir={encode_cfg.stage.out_dir}",
            output_dir=tmp_path / "a",
        )
    )
    run_stage(compose("stage=search", *common, output_dir=tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["test"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["test"]
    assert b["num_queries"] == a["num_queries"] == 40
    assert b["ndcg@10"] == pytest.approx(a["ndcg@10"], abs=0.02)  # near-tied random scores may swap
