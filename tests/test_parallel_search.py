"""`trainer.devices=2` on CPU (gloo): stage=encode and stage=search split the work by rank, and the merged
results equal one process's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simlm.launch import launch, process_count
from simlm.retrieval.parallel import query_slice, resolve_distribute
from simlm.retrieval.store import load_shards, read_manifest
from simlm.stages import run_stage


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Both runs with one thread per process: the same kernels, so the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fail_on_rank_1(cfg) -> str:
    import os

    if os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 fails")
    return f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}"


def test_process_count_reads_trainer_devices():
    on_cpu = {"accelerator": "cpu"}
    assert process_count({"trainer": {**on_cpu, "devices": 1}}) == 1
    assert process_count({"trainer": {**on_cpu, "devices": 3}}) == 3
    assert process_count({"trainer": {**on_cpu, "devices": "2"}}) == 2
    assert process_count({"trainer": {**on_cpu, "devices": [0, 1]}}) == 2
    assert process_count({"trainer": {**on_cpu, "devices": "0,1"}}) == 2
    assert process_count({"trainer": {**on_cpu, "devices": "auto"}}) == 1  # one process on a CPU
    assert process_count({"trainer": {**on_cpu, "devices": -1}}) == 1


def test_query_slices_are_whole_blocks_and_cover_every_query():
    slices = [query_slice(45, 8, r, 3) for r in range(3)]
    assert slices == [(0, 16), (16, 32), (32, 45)]  # 6 blocks of 8 (the last one 5)
    assert [query_slice(5, 8, r, 2) for r in range(2)] == [(0, 0), (0, 5)]  # one block: one rank works
    with pytest.raises(ValueError, match="distribute=shards splits exact search"):
        resolve_distribute("shards", object())


@pytest.mark.timeout(300)
def test_a_failing_rank_is_reported_by_rank_0():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 2}})
    with pytest.raises(RuntimeError, match=r"rank 1 exit code 1 \(of trainer.devices=2\)"):
        launch(_fail_on_rank_1, cfg)


def _search_worker(cfg) -> dict | None:
    """Every way of splitting the work, on each rank of `cfg.trainer.devices` processes."""
    from simlm.models.encoder import load_encoder
    from simlm.retrieval.ann import FaissIndex
    from simlm.retrieval.index import ExactSearch, MemorySearch
    from simlm.retrieval.parallel import encode_across_ranks, search_across_ranks
    from simlm.runtime import Runtime

    torch.set_num_threads(1)
    runtime = Runtime.from_config(cfg)
    with runtime.process_group():
        encoder, tokenizer = load_encoder({"name_or_path": cfg.model, "pooling": "mean"})
        texts = [f"query number {i} about " + "files " * (i % 7) for i in range(37)]
        encoded = encode_across_ranks(encoder, tokenizer, runtime, queries=texts, batch_size=4)
        results = {"encoded": (encoded,)}
        queries = np.random.default_rng(3).standard_normal((45, 16)).astype(np.float32)
        index = FaissIndex(cfg.index_dir)
        index.set_params({"nprobe": 2})
        emb = np.load(Path(cfg.emb_dir) / "emb_r0_s0.npy")
        targets = {
            "exact": ExactSearch(Path(cfg.emb_dir), block_rows=40),
            "index": index,
            "memory": MemorySearch([(np.arange(len(emb)), emb)]),
        }
        for name, target in targets.items():
            for distribute in ("auto", "queries"):
                results[f"{name}/{distribute}"] = search_across_ranks(
                    queries, target, 20, runtime, distribute=distribute, batch_size=8
                )
        return results if runtime.is_main else None


@pytest.mark.timeout(300)
def test_search_across_two_ranks_equals_one_rank(tmp_path, tiny_bert):
    from omegaconf import OmegaConf

    from simlm.retrieval.ann import build_index
    from simlm.retrieval.store import write_embeddings

    vectors = np.random.default_rng(0).standard_normal((330, 16)).astype(np.float32)
    write_embeddings(tmp_path / "emb", vectors, 330, shard_size=330, dtype="float32")
    build_index(tmp_path / "emb", tmp_path / "index", "IVF4,Flat", seed=0)

    def run(devices: int) -> dict:
        cfg = {"accelerator": "cpu", "devices": devices}
        paths = {
            "model": str(tiny_bert),
            "emb_dir": str(tmp_path / "emb"),
            "index_dir": str(tmp_path / "index"),
        }
        return launch(_search_worker, OmegaConf.create({"trainer": cfg, **paths}))

    one, two = run(1), run(2)
    assert one.keys() == two.keys()
    for key in one:
        for got, expected in zip(two[key], one[key]):
            np.testing.assert_array_equal(got, expected, err_msg=key)  # bit for bit
    assert (one["index/auto"][1] != one["exact/auto"][1]).any()  # nprobe=2 of 4 lists: approximate


@pytest.mark.timeout(600)
def test_two_process_encode_and_search_stages_equal_one_process(compose, tmp_path, small_beir, tiny_bert):
    common = (
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        "model.pooling=mean",
        "trainer.accelerator=cpu",
    )

    def encode(name: str, devices: int) -> Path:
        cfg = compose(
            "stage=encode",
            *common,
            f"trainer.devices={devices}",
            "stage.shard_size=100",
            "stage.batch_size=16",
            "stage.dtype=float32",
            f"stage.out_dir={tmp_path / name}",
            output_dir=tmp_path / f"run-{name}",
        )
        run_stage(cfg)
        return tmp_path / name

    one, two = encode("emb1", 1), encode("emb2", 2)
    manifest = read_manifest(two)
    assert manifest["world_size"] == 2 and {s["rank"] for s in manifest["shards"]} == {0, 1}
    metrics = json.loads((tmp_path / "run-emb2" / "metrics.json").read_text())["encode"]
    assert metrics["encoded"] == metrics["passages"] == manifest["corpus_size"]  # both ranks counted

    def assembled(folder: Path) -> np.ndarray:
        parts = list(load_shards(folder))
        out = np.empty((manifest["corpus_size"], manifest["dim"]), dtype=np.float32)
        for rows, emb in parts:
            out[rows] = emb
        return out

    # each rank encodes its own shards: the same vectors up to float rounding of other batches
    np.testing.assert_allclose(assembled(two), assembled(one), atol=1e-5)

    def search(name: str, devices: int, *extra: str) -> tuple[str, str]:
        out = tmp_path / name
        run_stage(
            compose(
                "stage=search",
                *common,
                f"trainer.devices={devices}",
                "stage.split=[test,dev]",
                "stage.top_k=30",
                "stage.encode_batch_size=8",  # several query batches, dealt out to both ranks
                "stage.query_batch_size=16",
                *extra,
                output_dir=out,
            )
        )
        return (out / "test.trec").read_text(), (out / "dev.trec").read_text()

    exact = search("exact1", 1, f"stage.embeddings_dir={one}", "stage.block_rows=40")
    assert exact == search("exact2", 2, f"stage.embeddings_dir={one}", "stage.block_rows=40")  # shards
    metrics = json.loads((tmp_path / "exact2" / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "exact1" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_search_stages_of_every_kind_equal_one_process(compose, tmp_path, small_beir, tiny_bert):
    """Exact search split by queries, a faiss index, and passages encoded in memory, through the stage."""
    common = (
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        "model.pooling=mean",
        "trainer.accelerator=cpu",
    )
    emb, index = tmp_path / "emb", tmp_path / "index"
    run_stage(
        compose(
            "stage=encode", *common, "stage.dtype=float32", f"stage.out_dir={emb}", output_dir=tmp_path / "e"
        )
    )
    run_stage(
        compose(
            "stage=index",
            f"stage.embeddings_dir={emb}",
            "stage.factory='IVF4,Flat'",
            f"stage.out_dir={index}",
            output_dir=tmp_path / "i",
        )
    )

    def search(name: str, devices: int, *extra: str) -> str:
        out = tmp_path / name
        overrides = ("stage.top_k=30", "stage.encode_batch_size=8", "stage.query_batch_size=16", *extra)
        run_stage(compose("stage=search", *common, f"trainer.devices={devices}", *overrides, output_dir=out))
        return (out / "test.trec").read_text()

    by_queries = (f"stage.embeddings_dir={emb}", "stage.distribute=queries")
    assert search("q1", 1, *by_queries) == search("q2", 2, *by_queries)
    ivf = (f"stage.index_dir={index}", "stage.nprobe=2")  # approximate: 2 of 4 lists
    assert search("ivf1", 1, *ivf) == search("ivf2", 2, *ivf)
    assert search("mem1", 1) == search("mem2", 2)
