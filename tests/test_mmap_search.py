"""Memory-mapped exact search: the same results as in-memory search, with one shard mapped at a time."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

from simlm.retrieval import store
from simlm.retrieval.index import ExactSearch, search
from simlm.retrieval.store import Block, iter_blocks, plan_blocks, read_manifest, write_embeddings

N, DIM = 700, 24


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((N, DIM)).astype(np.float32), rng.standard_normal((30, DIM)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mmap_search_equals_in_memory_search(tmp_path, data, dtype):
    emb, queries = data
    write_embeddings(tmp_path, emb, N, shard_size=300, dtype=dtype)
    stored = emb.astype(dtype).astype(np.float32)  # what the shards hold
    in_memory = search(queries, [(np.arange(N), stored)], 50, batch_size=8)
    for block_rows in (None, 64, 1000):
        for mmap in (True, False):
            got = ExactSearch(tmp_path, mmap=mmap, block_rows=block_rows).search(queries, 50, batch_size=8)
            np.testing.assert_array_equal(got[1], in_memory[1], err_msg=f"{block_rows} {mmap}")
            np.testing.assert_allclose(got[0], in_memory[0], atol=1e-5)
    whole = ExactSearch(tmp_path, mmap=False).search(queries, 50)
    mapped = ExactSearch(tmp_path, mmap=True).search(queries, 50)
    np.testing.assert_array_equal(whole[0], mapped[0])  # the same arithmetic, bit for bit
    np.testing.assert_array_equal(whole[1], mapped[1])


def test_blocks_cover_every_row_once_and_parts_split_them(tmp_path, data):
    write_embeddings(tmp_path, data[0], N, shard_size=300)
    manifest = read_manifest(tmp_path)
    blocks = plan_blocks(manifest, 128)
    assert blocks[:4] == [Block(0, 0, 128), Block(0, 128, 256), Block(0, 256, 300), Block(1, 0, 128)]
    rows = np.concatenate([r for r, _ in iter_blocks(tmp_path, blocks)])
    np.testing.assert_array_equal(rows, np.arange(N))
    parts = [ExactSearch(tmp_path, block_rows=128).part(r, 3).blocks for r in range(3)]
    assert [b for p in parts for b in p] == blocks and all(parts)
    assert plan_blocks(manifest) == [Block(0, 0, 300), Block(1, 0, 300), Block(2, 0, 100)]
    with pytest.raises(ValueError, match="block_rows must be positive"):
        plan_blocks(manifest, 0)


def test_exact_search_maps_one_shard_at_a_time(tmp_path, data, monkeypatch):
    """Peak memory is one shard's pages (+ a float32 block): the previous shard is unmapped before the
    next one is mapped, whatever the number of shards."""
    emb, queries = data
    write_embeddings(tmp_path, emb, N, shard_size=100, dtype="float16")
    mapped: list[weakref.ref] = []
    real_load = np.load

    def tracking_load(path, *args, **kwargs):
        array = real_load(path, *args, **kwargs)
        if "emb_" in str(path):
            alive = [r for r in mapped if r() is not None]
            assert not alive, f"{len(alive)} shard(s) still mapped when {path} is mapped"
            assert isinstance(array, np.memmap)
            mapped.append(weakref.ref(array))
        return array

    monkeypatch.setattr(store.np, "load", tracking_load)
    got = ExactSearch(tmp_path, block_rows=40).search(queries, 20)
    assert len(mapped) == 7
    monkeypatch.undo()
    expected = search(queries, [(np.arange(N), emb.astype(np.float16).astype(np.float32))], 20)
    np.testing.assert_array_equal(got[1], expected[1])


def test_write_embeddings_rejects_rows_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="rows 0-10: got an array of shape"):
        write_embeddings(tmp_path, lambda a, b: np.zeros((b - a + 1, 4)), 25, shard_size=10)
    path = write_embeddings(
        tmp_path / "ok", lambda a, b: np.full((b - a, 4), a, np.float32), 25, shard_size=10
    )
    manifest = read_manifest(path.parent, corpus_size=25)
    assert manifest["dim"] == 4 and manifest["settings"] == {} and len(manifest["shards"]) == 3
