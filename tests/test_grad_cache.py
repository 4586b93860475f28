"""GradCache gives exactly the plain loss and gradients: one process, two gloo processes, Lightning DDP and
DeepSpeed ZeRO-2 through run.py, fp32 and bf16 autocast, with dropout replayed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simlm.losses import contrastive_loss
from simlm.models.grad_cache import GradCacheSettings, cached_encode, chunk_features
from tests.conftest import PROJECT_ROOT
from tests.test_biencoder_ddp import N_PASSAGES, B, free_port, make_batch

GC = {"query_chunk": 3, "passage_chunk": 5}  # chunks that do not divide the batch (4 queries, 12 passages)


def dropout_free_copy(model_dir: Path, out_dir: Path) -> Path:
    """`model_dir` with hidden and attention dropout 0: plain and chunked encodings then agree exactly."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    AutoModel.from_pretrained(model_dir, config=config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_bert, tmp_path_factory) -> Path:
    return dropout_free_copy(tiny_bert, tmp_path_factory.mktemp("no-dropout-bert"))


def encoder(model_dir: Path):
    from simlm.models.encoder import TextEncoder

    torch.manual_seed(0)
    enc = TextEncoder.from_pretrained(model_dir, pooling="cls")
    enc.train()
    return enc


def loss_of(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return contrastive_loss(q.float(), p.float(), N_PASSAGES, 0.05)[0]


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def plain_chunked(enc, batch, q_chunk: int, p_chunk: int) -> torch.Tensor:
    """The reference: chunks encoded one after another with the graph kept (same random draws)."""
    q = torch.cat([enc.encode(c, is_query=True) for c in chunk_features(batch["query"], q_chunk)])
    p = torch.cat([enc.encode(c, is_query=False) for c in chunk_features(batch["passage"], p_chunk)])
    return loss_of(q, p)


def cached(enc, batch, q_chunk: int, p_chunk: int) -> torch.Tensor:
    params = list(enc.parameters())
    q = cached_encode(lambda c: enc.encode(c, is_query=True), batch["query"], q_chunk, params)
    p = cached_encode(lambda c: enc.encode(c, is_query=False), batch["passage"], p_chunk, params)
    return loss_of(q, p)


def assert_same(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert got.keys() == want.keys() and len(want) > 10
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, atol=atol, rtol=atol, msg=name)


def test_chunked_backward_equals_whole_batch_without_dropout(no_dropout_bert):
    enc = encoder(no_dropout_bert)
    batch = make_batch(str(no_dropout_bert), slice(0, B))
    q = enc.encode(batch["query"], is_query=True)
    p = enc.encode(batch["passage"], is_query=False)
    plain = loss_of(q, p)
    plain.backward()
    want = grads(enc)
    for q_chunk, p_chunk in [(1, 1), (3, 5), (4, 12), (100, 100)]:
        loss = cached(enc, batch, q_chunk, p_chunk)
        assert loss.item() == pytest.approx(plain.item(), abs=1e-6)
        loss.backward()
        assert_same(grads(enc), want)


def test_a_chunk_covering_the_batch_is_the_plain_computation(no_dropout_bert):
    """No second forward when one chunk holds the whole batch; chunks are encoded twice otherwise."""
    enc = encoder(no_dropout_bert)
    batch = make_batch(str(no_dropout_bert), slice(0, B))
    rows = len(batch["passage"]["input_ids"])
    calls = []

    def encode(chunk):
        calls.append(len(chunk["input_ids"]))
        return enc.encode(chunk, is_query=False)

    for chunk, want in [(rows, [rows]), (rows + 7, [rows]), (5, [5, 5, 2] * 2)]:
        calls.clear()
        out = cached_encode(encode, batch["passage"], chunk, list(enc.parameters()))
        out.float().square().sum().backward()
        assert calls == want, chunk
        enc.zero_grad(set_to_none=True)


def test_dropout_masks_are_replayed_exactly(tiny_bert):
    enc = encoder(tiny_bert)  # hidden + attention dropout 0.1, train mode
    batch = make_batch(str(tiny_bert), slice(0, B))
    torch.manual_seed(7)
    ref = plain_chunked(enc, batch, 3, 5)
    ref.backward()
    want, rng_after_plain = grads(enc), torch.get_rng_state()
    torch.manual_seed(7)
    loss = cached(enc, batch, 3, 5)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert_same(grads(enc), want)
    # the replay leaves the generator where the plain computation leaves it
    assert torch.equal(torch.get_rng_state(), rng_after_plain)
    # and dropout is really on: another seed gives other gradients
    torch.manual_seed(8)
    cached(enc, batch, 3, 5).backward()
    other = grads(enc)
    assert any(not torch.allclose(other[n], want[n], atol=1e-5) for n in want)


def test_bf16_autocast_is_replayed_in_backward(no_dropout_bert):
    enc = encoder(no_dropout_bert)
    batch = make_batch(str(no_dropout_bert), slice(0, B))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = plain_chunked(enc, batch, 3, 5)
    plain.backward()
    want = grads(enc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cached(enc, batch, 3, 5)
    loss.backward()
    # plain sums the chunks' bf16 weight gradients in bf16 (autocast caches one cast per weight), GradCache
    # in fp32: equal to bf16 rounding. Without autocast in the replay the error is ~100% of the gradient.
    got = grads(enc)
    for name, g in want.items():
        error = (got[name] - g).abs().max() / g.abs().max().clamp_min(1e-12)
        assert error < 0.05, name


def test_module_kd_loss_and_gradients_equal_plain(no_dropout_bert):
    from simlm.modules.biencoder import BiEncoderModule

    batch = make_batch(str(no_dropout_bert), slice(0, B))
    batch["scores"] = torch.randn(B, N_PASSAGES)
    results = []
    for grad_cache in (None, GC):
        torch.manual_seed(0)
        module = BiEncoderModule(
            str(no_dropout_bert), {"pooling": "cls"}, temperature=0.05, kd_alpha=0.2, grad_cache=grad_cache
        )
        module.train()
        loss, metrics = module.compute_loss(batch, training=True)
        loss.backward()
        results.append((metrics, grads(module)))
    (plain_metrics, plain_grads), (gc_metrics, gc_grads) = results
    for key in ("loss", "kd_loss", "contrastive_loss"):
        assert gc_metrics[key] == pytest.approx(plain_metrics[key], abs=1e-6)
    assert_same(gc_grads, plain_grads)


@pytest.mark.parametrize(
    "bad",
    [
        {"query_chunk": 0, "passage_chunk": 4},
        {"query_chunk": 2},
        {"chunk": 2},
        8,
        {"query_chunk": 2.5, "passage_chunk": 4},
    ],
)
def test_bad_settings_name_the_key(bad):
    with pytest.raises(ValueError, match="stage.module.grad_cache"):
        GradCacheSettings.parse(bad)


def _worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from simlm.modules.biencoder import BiEncoderModule

        torch.set_num_threads(1)
        per = B // world
        batch = make_batch(model_dir, slice(rank * per, (rank + 1) * per))
        out = {}
        for name, grad_cache in (("plain", None), ("cached", {"query_chunk": 1, "passage_chunk": 2})):
            torch.manual_seed(0)
            module = BiEncoderModule(model_dir, {"pooling": "cls"}, temperature=0.05, grad_cache=grad_cache)
            module.train()
            loss, _ = module.compute_loss(batch, training=True)  # all-gathers the embeddings
            loss.backward()
            g = grads(module)
            for t in g.values():  # DDP's average
                dist.all_reduce(t)
                t /= world
            out[name] = {"loss": loss.item(), "grads": g}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_processes_with_all_gather_equal_plain_and_single_process(no_dropout_bert, tmp_path):
    from simlm.modules.biencoder import BiEncoderModule

    torch.manual_seed(0)
    single = BiEncoderModule(str(no_dropout_bert), {"pooling": "cls"}, temperature=0.05)
    single.train()
    loss, _ = single.compute_loss(make_batch(str(no_dropout_bert), slice(0, B)), training=True)
    loss.backward()
    want = grads(single)
    mp.start_processes(
        _worker,
        args=(2, free_port(), str(no_dropout_bert), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["cached"]["loss"] == pytest.approx(got["plain"]["loss"], abs=1e-6)
        assert_same(got["cached"]["grads"], got["plain"]["grads"])
        assert_same(got["cached"]["grads"], want)  # scaled loss: the global batch's exact gradient


def _first_step_grads(
    trainer: str, grad_cache: bool, model_dir: Path, small_beir, bm25, out: Path, cache_dir
):
    """Train one step through run.py (2 processes) and return rank 0's reduced gradients of that step."""
    grads_file = out.parent / f"{out.name}.pt"
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        "stage=biencoder",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={model_dir}",
        "model.pooling=cls",
        f"stage.datamodule.train_file={bm25 / 'train.jsonl'}",
        f"trainer={trainer}",
        "trainer.devices=2",
        "trainer.max_steps=1",
        "+trainer.limit_val_batches=0",
        "stage.monitor=null",
        "stage.callbacks.retrieval_evaluation.enabled=false",
        "stage.train_n_passages=4",
        "stage.datamodule.batch_size=4",
        "stage.final_eval.enabled=false",
        "+callbacks.first_step_gradients._target_=tests.grad_dump.FirstStepGradients",
        f"+callbacks.first_step_gradients.out={grads_file}",
        f"hydra.run.dir={out}",
    ]
    if grad_cache:
        cmd.append("stage.module.grad_cache={query_chunk: 1, passage_chunk: 3}")
    env = {
        **os.environ,
        "SIMLM_CACHE": str(cache_dir),
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    res = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(grads_file)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("trainer", ["ddp", "deepspeed"])
def test_lightning_strategies_reduce_the_same_gradients(
    trainer, no_dropout_bert, small_beir, small_beir_bm25, tmp_path, cache_dir
):
    """Lightning DDP and DeepSpeed ZeRO-2 (2 CPU processes): GradCache's reduced gradients are the plain ones."""
    plain, cached_ = (
        _first_step_grads(
            trainer, gc, no_dropout_bert, small_beir, small_beir_bm25, tmp_path / f"gc{gc}", cache_dir
        )
        for gc in (False, True)
    )
    assert sum(g.abs().sum().item() for g in plain.values()) > 0
    assert_same(cached_, plain)
