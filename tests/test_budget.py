"""`stage.budget`: epochs sized by the collection, counted the way the loaders count steps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from simlm.stages.train import apply_budget, epochs_for_budget


def loader_steps(n: int, batch: int, world: int, accumulate: int) -> int:
    """Optimizer steps of one epoch on rank 0, from a real DataLoader (the datamodules' drop_last rule)."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=0, shuffle=False)
    batches = len(DataLoader(range(n), batch_size=batch, sampler=sampler, drop_last=n >= batch))
    return math.ceil(batches / accumulate)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_epochs_give_at_least_min_steps_and_no_more_epochs_than_needed(world, accumulate):
    for n in [1, 5, 31, 32, 33, 100, 709, 5500]:
        for batch in [1, 8, 32]:
            if n >= batch and math.ceil(n / world) < batch:  # a rank without a full batch: no step at all
                continue
            steps_per_epoch = loader_steps(n, batch, world, accumulate)
            for min_steps in [1, 7, 20, 200]:
                epochs, steps = epochs_for_budget(n, batch, world, accumulate, min_steps)
                assert steps == steps_per_epoch, (n, batch)
                assert epochs * steps >= min_steps and (epochs - 1) * steps < min_steps
                capped, _ = epochs_for_budget(n, batch, world, accumulate, min_steps, max_epochs=3)
                assert capped == min(epochs, 3)


def test_small_collections_train_more_epochs_than_large_ones():
    assert epochs_for_budget(709, 8, min_steps=200, max_epochs=4) == (3, 88)  # SciFact's re-ranker
    assert epochs_for_budget(300, 8, min_steps=200, max_epochs=4) == (4, 37)  # capped
    assert epochs_for_budget(20000, 8, min_steps=200, max_epochs=4) == (1, 2500)


@pytest.mark.parametrize("bad", [dict(num_examples=0), dict(batch_size=0), dict(min_steps=0)])
def test_bad_sizes_are_refused(bad):
    kwargs = dict(num_examples=10, batch_size=2, min_steps=5) | bad
    with pytest.raises(ValueError, match="stage.budget needs positive sizes"):
        epochs_for_budget(**kwargs)


def test_the_budget_sets_the_trainers_epochs_and_refuses_unknown_keys():
    trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=1, fit_loop=SimpleNamespace(max_epochs=1))
    datamodule = SimpleNamespace(setup=lambda stage: None, train_dataset=list(range(709)), batch_size=8)
    assert apply_budget(trainer, datamodule, OmegaConf.create({"min_steps": 100, "max_epochs": 5})) == 3
    assert trainer.fit_loop.max_epochs == 3  # 355 examples per rank: 44 steps per epoch
    with pytest.raises(ValueError, match=r"stage.budget: unknown keys \['min_step'\]"):
        apply_budget(trainer, datamodule, OmegaConf.create({"min_step": 100}))
