"""Cross-process gather and loss scaling: 2 CPU processes (gloo) against a single-process reference.

A tiny linear "encoder" (identical init on every rank) embeds a fixed global batch of N = 4 queries and
N·n = 12 passages (d = 8, float64). Each rank takes its half, computes ``contrastive_loss``, back-props
and averages the parameter gradients over ranks as DDP does. The parent process checks:

- ``scaled=True`` gives exactly the gradient (and W × the value) of the global mean loss;
- ``scaled=False`` gives the global mean loss *value* after averaging, but NOT its gradient: it equals
  the gradient with the cross-rank terms dropped (each rank's rows differentiated only through its
  own embeddings), as the analysis in ``simlm/losses.py`` predicts.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from simlm.distributed import gather_with_grad, rank, world_size
from simlm.losses import contrastive_logits, contrastive_loss, contrastive_targets, mask_hard_negatives

WORLD, N, NPSG, D, T = 2, 4, 3, 8, 0.1
B = N // WORLD
VARIANTS: dict[str, dict] = {
    "scaled": {"scaled": True},
    "scaled_qp": {"scaled": True, "full": False},
    "unscaled": {"scaled": False},
    "unscaled_masked": {"scaled": False, "mask_own_hard_negatives": True},
}


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1234)
    q_in = torch.randn(N, D, dtype=torch.float64)
    p_in = torch.randn(N * NPSG, D, dtype=torch.float64)
    torch.manual_seed(99)
    enc = nn.Linear(D, D).double()
    return enc, q_in, p_in


def _embed(enc: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(enc(x), dim=-1)


def _q_slice(x: torch.Tensor, r: int) -> torch.Tensor:
    return x[r * B : (r + 1) * B]


def _p_slice(x: torch.Tensor, r: int) -> torch.Tensor:
    return x[r * B * NPSG : (r + 1) * B * NPSG]


def _grads(enc: nn.Module) -> list[torch.Tensor]:
    return [prm.grad.detach().clone() for prm in enc.parameters()]


def _worker(r: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.set_num_threads(1)
        res: dict = {"world_size": world_size(), "rank": rank()}

        # gather semantics: rank order, local slice differentiable, others detached
        x = torch.full((2, 3), float(r + 1), dtype=torch.float64, requires_grad=True)
        g = gather_with_grad(x)
        (g * torch.arange(g.numel(), dtype=torch.float64).view_as(g)).sum().backward()
        res["gathered"] = g.detach()
        res["gather_grad"] = x.grad.detach().clone()

        enc, q_in, p_in = _setup()
        q_loc, p_loc = _q_slice(q_in, r), _p_slice(p_in, r)
        for name, kwargs in VARIANTS.items():
            enc.zero_grad()
            loss, rows = contrastive_loss(_embed(enc, q_loc), _embed(enc, p_loc), NPSG, T, **kwargs)
            loss.backward()
            grads = _grads(enc)
            for gr in grads:  # DDP: average the gradients over ranks
                dist.all_reduce(gr)
                gr /= world
            loss_avg = loss.detach().clone()
            dist.all_reduce(loss_avg)
            loss_avg /= world
            res[name] = {
                "loss": loss.item(),
                "loss_avg": loss_avg.item(),
                "grads": grads,
                "rows": rows.detach(),
            }
        torch.save(res, Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_reference(full: bool) -> tuple[float, list[torch.Tensor], torch.Tensor]:
    """Global mean loss, its parameter gradient and the global logits, in this (non-distributed) process."""
    enc, q_in, p_in = _setup()
    q, p = _embed(enc, q_in), _embed(enc, p_in)
    loss, logits = contrastive_loss(q, p, NPSG, T, full=full, scaled=True)  # W = 1: plain global mean
    loss.backward()
    return loss.item(), _grads(enc), logits.detach()


def _no_cross_terms_reference(mask: bool) -> list[torch.Tensor]:
    """(1/W) Σ_r ∇ [local CE of rank r's rows, differentiated only through rank r's embeddings]."""
    enc, q_in, p_in = _setup()
    total = [torch.zeros_like(prm) for prm in enc.parameters()]
    for r in range(WORLD):
        enc.zero_grad()
        qs, ps = [], []
        for s in range(WORLD):
            qe, pe = _embed(enc, _q_slice(q_in, s)), _embed(enc, _p_slice(p_in, s))
            qs.append(qe if s == r else qe.detach())
            ps.append(pe if s == r else pe.detach())
        rows = contrastive_logits(torch.cat(qs), torch.cat(ps), NPSG, T)[r * B : (r + 1) * B]
        if mask:
            rows = mask_hard_negatives(rows, NPSG, r * B)
        F.cross_entropy(rows, contrastive_targets(B, NPSG, r * B)).backward()
        for acc, gr in zip(total, _grads(enc)):
            acc += gr / WORLD
    return total


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_not_distributed_defaults():
    assert not dist.is_initialized()
    assert world_size() == 1 and rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


@pytest.mark.timeout(120)
def test_gather_with_grad_two_processes(results):
    for r, res in enumerate(results):
        assert res["world_size"] == WORLD and res["rank"] == r
        expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)]).double()
        assert torch.equal(res["gathered"], expected)
        # d/dx of sum(g * arange): only the local slice's weights arrive
        weights = torch.arange(12, dtype=torch.float64).view(4, 3)
        assert torch.equal(res["gather_grad"], weights[2 * r : 2 * r + 2])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,full", [("scaled", True), ("scaled_qp", False)])
def test_scaled_loss_gives_exact_global_gradient(results, name, full):
    ref_loss, ref_grads, ref_logits = _global_reference(full)
    for r, res in enumerate(results):
        out = res[name]
        assert abs(out["loss"] - WORLD * ref_loss) < 1e-10  # every rank: W x global mean
        assert _max_diff(out["grads"], ref_grads) < 1e-10
        assert torch.allclose(out["rows"], ref_logits[r * B : (r + 1) * B], atol=1e-10, rtol=0)


@pytest.mark.timeout(120)
def test_unscaled_loss_value_is_global_mean_but_gradient_drops_cross_terms(results):
    ref_loss, ref_grads, _ = _global_reference(True)
    partial = _no_cross_terms_reference(mask=False)
    for res in results:
        out = res["unscaled"]
        assert abs(out["loss_avg"] - ref_loss) < 1e-10  # same value after averaging over ranks
        assert _max_diff(out["grads"], partial) < 1e-10  # = gradient without cross-rank terms
        assert _max_diff(out["grads"], ref_grads) > 1e-3  # != gradient of the global mean loss
    masked = _no_cross_terms_reference(mask=True)
    for res in results:
        assert _max_diff(res["unscaled_masked"]["grads"], masked) < 1e-10
