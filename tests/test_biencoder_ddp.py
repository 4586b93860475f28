"""2 CPU processes (gloo) vs one process on the same global batch: BiEncoderModule loss and gradients agree."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

B, N_PASSAGES = 4, 3
QUERIES = ["open a file", "parse json text", "sort a list", "join path parts"]
TEXTS = [f"passage {i} about " + ("files", "json", "lists", "paths")[i % 4] for i in range(B * N_PASSAGES)]


def make_batch(model_dir: str, rows: slice) -> dict:
    from simlm.data.datamodules import GroupCollator
    from simlm.models.encoder import RetrievalSettings, load_tokenizer

    items = [
        {
            "query": QUERIES[i],
            "titles": [f"t{j}" for j in range(i * N_PASSAGES, (i + 1) * N_PASSAGES)],
            "texts": TEXTS[i * N_PASSAGES : (i + 1) * N_PASSAGES],
            "scores": [0.0] * N_PASSAGES,
        }
        for i in range(B)
    ][rows]
    # each rank pads its own half; padding does not change the [CLS] vectors under the attention mask
    return GroupCollator(load_tokenizer(model_dir), RetrievalSettings())(items)


def build_module(model_dir: str):
    from simlm.modules.biencoder import BiEncoderModule

    torch.manual_seed(0)
    module = BiEncoderModule(
        model_dir, {"pooling": "cls"}, temperature=0.05, full_contrastive=True, scaled_loss=True
    )
    module.double()
    module.eval()  # no dropout: both runs must be deterministic
    return module


def loss_and_grads(module, batch) -> tuple[float, dict[str, torch.Tensor]]:
    loss, metrics = module.compute_loss(batch, training=True)
    loss.backward()
    return metrics["loss"], {
        n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None
    }


def worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        module = build_module(model_dir)
        per = B // world
        batch = make_batch(model_dir, slice(rank * per, (rank + 1) * per))
        loss, grads = loss_and_grads(module, batch)
        for g in grads.values():  # what DDP does: average gradients over ranks
            dist.all_reduce(g)
            g /= world
        torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_process_loss_and_gradients_equal_single_process(tiny_bert, tmp_path):
    model_dir = str(tiny_bert)
    module = build_module(model_dir)
    single_loss, single_grads = loss_and_grads(module, make_batch(model_dir, slice(0, B)))
    mp.start_processes(
        worker, args=(2, free_port(), model_dir, str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"] == pytest.approx(single_loss, abs=1e-5)
        assert got["grads"].keys() == single_grads.keys()
        for name, grad in single_grads.items():
            torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.timeout(600)
def test_trainer_ddp_runs_through_run_py(tiny_bert, small_beir, small_beir_bm25, tmp_path, cache_dir):
    """Lightning's DDP re-launches run.py for rank 1 (gloo on CPU); rank 0 writes the results."""
    import json
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        "stage=biencoder",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        f"stage.datamodule.train_file={small_beir_bm25 / 'train.jsonl'}",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "stage.train_n_passages=4",
        "stage.datamodule.batch_size=4",
        "stage.final_eval.enabled=false",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "SIMLM_CACHE": str(cache_dir)}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ndcg@10" in metrics["val"]
    assert (out / "model" / "model.safetensors").is_file()
    # 150 training queries / (2 ranks x 4 per batch) = 18 full steps per epoch, both ranks in step
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 150 // 8
