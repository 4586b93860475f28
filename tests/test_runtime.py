"""The inference runtime: the one precision parser, autocast, rank slicing, the process-group helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from simlm.runtime import (
    Runtime,
    autocast,
    autocast_dtype,
    batch_token_budget,
    is_main_process,
    length_sorted_batches,
    parse_precision,
    rank_slice,
    resolve_device,
)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("32-true", "32-true"),
        ("32", "32-true"),
        (32, "32-true"),
        (None, "32-true"),
        ("16-mixed", "16-mixed"),
        ("16", "16-mixed"),
        (16, "16-mixed"),
        ("bf16-mixed", "bf16-mixed"),
        ("bf16", "bf16-mixed"),
        ("BF16-Mixed", "bf16-mixed"),
    ],
)
def test_parse_precision_accepts_lightnings_spellings(value, canonical):
    assert parse_precision(value) == canonical


@pytest.mark.parametrize("value", ["fp16", "64", "bf16-true", "half", "", "mixed"])
def test_parse_precision_rejects_anything_else_naming_the_accepted_values(value):
    with pytest.raises(ValueError, match="unknown precision") as info:
        parse_precision(value)
    assert "bf16-mixed" in str(info.value) and "32-true" in str(info.value)


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_bf16_mixed_is_bfloat16_and_never_float16(device_type):
    for spelling in ("bf16-mixed", "bf16"):
        assert autocast_dtype(spelling, device_type) is torch.bfloat16


def test_16_mixed_is_float16_on_cuda_only_and_32_is_off():
    assert autocast_dtype("16-mixed", "cuda") is torch.float16
    assert autocast_dtype("16-mixed", "cpu") is None
    assert autocast_dtype("32-true", "cuda") is None
    assert autocast_dtype("32", "cpu") is None


def test_autocast_contexts_on_cpu():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with autocast("bf16-mixed", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast("32-true", "cpu"):
        assert (x @ w).dtype == torch.float32
    with autocast("16-mixed", torch.device("cpu")):  # float16 autocast is CUDA-only
        assert (x @ w).dtype == torch.float32


@pytest.mark.parametrize(("n", "world"), [(0, 1), (1, 2), (7, 3), (10, 4), (1000, 7), (5, 5)])
def test_rank_slices_are_contiguous_disjoint_cover_everything_and_differ_by_at_most_one(n, world):
    slices = [rank_slice(n, r, world) for r in range(world)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, no gap, no overlap
    sizes = [end - start for start, end in slices]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_rank_slice_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="outside world size"):
        rank_slice(10, 2, 2)


@pytest.mark.parametrize(
    ("batch_size", "max_tokens"), [(1, None), (4, None), (64, None), (8, 100), (64, 40), (3, 1)]
)
def test_length_sorted_batches_cover_every_row_once_longest_first_within_both_caps(batch_size, max_tokens):
    rng = np.random.default_rng(batch_size)
    lengths = rng.integers(1, 60, size=101)
    batches = length_sorted_batches(list(lengths), batch_size, max_tokens)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(101))  # every row exactly once
    assert all(lengths[a] >= lengths[b] for a, b in zip(flat, flat[1:]))  # longest first
    for idx in batches:
        assert 1 <= len(idx) <= batch_size
        padded = len(idx) * int(lengths[idx].max())
        assert max_tokens is None or padded <= max_tokens or len(idx) == 1  # a too-long row goes alone
    # greedy: a batch stops early only because the next row would break a cap
    for idx in batches[:-1]:
        widened = len(idx) + 1
        assert widened > batch_size or (max_tokens is not None and widened * lengths[idx].max() > max_tokens)
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches([3], 0)


def test_cpu_batches_are_capped_in_tokens_and_gpu_batches_are_not():
    assert batch_token_budget("cpu") == 8192 and batch_token_budget(torch.device("cuda", 0)) is None
    # MiniLM at 256 tokens: 128-row batches become 32-row ones on a CPU; short queries keep 128
    assert {len(b) for b in length_sorted_batches([256] * 128, 128, batch_token_budget("cpu"))} == {32}
    assert [len(b) for b in length_sorted_batches([40] * 128, 128, batch_token_budget("cpu"))] == [128]


def test_runtime_from_config_reads_the_trainer_group(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "bf16"}})
    runtime = Runtime.from_config(cfg)
    assert runtime.device == torch.device("cpu") and runtime.precision == "bf16-mixed"
    assert Runtime.from_config(OmegaConf.create({"trainer": {"precision": None}})).precision == "32-true"
    with pytest.raises(ValueError, match="unknown precision"):
        Runtime.from_config(OmegaConf.create({"trainer": {"precision": "fp8"}}))


def test_runtime_in_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    runtime = Runtime(resolve_device("cpu"))
    with runtime.process_group() as created:
        assert created is False
        assert (runtime.rank, runtime.world_size, runtime.is_main) == (0, 1, True)
        assert runtime.broadcast({"a": 1}) == {"a": 1}
        assert runtime.gather(3) == [3]
        assert runtime.slice(5) == (0, 5)
        runtime.barrier()


def test_main_process_without_a_group_follows_the_launchers_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert is_main_process() is False
    monkeypatch.setenv("RANK", "0")
    assert is_main_process() is True
