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
