"""The optimizer: AdamW's fused kernel where it applies, the same update as the reference loop."""

from __future__ import annotations

import copy

import torch

from simlm.optim import build_optimizer, fused_supported


def test_the_fused_step_equals_the_reference_adamw_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 1))
    reference = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    optimizer, _ = build_optimizer(model, 1e-2, 0.01, 0, 10, "linear")
    assert optimizer.defaults["fused"] is True
    assert optimizer.param_groups[0]["lr"] == 1e-2  # the schedule starts at the peak (no warmup)
    ref_params = list(reference.parameters())
    ref_opt = torch.optim.AdamW(  # matrices decay, biases and LayerNorm weights do not
        [
            {"params": [p for p in ref_params if p.ndim >= 2], "weight_decay": 0.01},
            {"params": [p for p in ref_params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-2,
        foreach=False,
    )
    x = torch.randn(8, 16)
    for _ in range(3):
        for net, opt in ((model, optimizer), (reference, ref_opt)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model[0].weight, initial[0].weight)  # three steps moved it


def test_fused_can_be_turned_off():
    """Mixed precision turns it off (Lightning's AMP plugin refuses clipping with a fused optimizer)."""
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0, 0, 10, fused=False)
    assert optimizer.defaults["fused"] is False


def test_fused_only_where_every_parameter_allows_it():
    cpu = torch.nn.Parameter(torch.zeros(2))
    assert fused_supported([cpu, torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))])
    assert not fused_supported([cpu, torch.nn.Parameter(torch.zeros(2, device="meta"))])
    assert not fused_supported([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])
