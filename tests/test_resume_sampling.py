"""Resuming with DataLoader workers samples the resumed epoch's groups (issue 14, item 22).

Lightning creates the training iterator, forking the workers with a copy of the dataset, once before the
first `on_train_epoch_start`; when resuming at epoch 2 the copies used to hold epoch 0, so the first
resumed epoch trained on epoch 0's negatives. The real `GroupDataset`, `CorpusDataModule.train_dataloader`
and `set_sampling_epoch` are used with a one-parameter module that records the sampled groups.
"""

from __future__ import annotations

from collections import defaultdict

import pytorch_lightning as pl
import torch

from simlm.data.corpus import Corpus, Passage
from simlm.data.datamodules import CorpusDataModule, GroupDataset
from simlm.data.formats import ScoredDocs, TrainingExample
from simlm.modules.common import set_sampling_epoch

N_QUERIES, N_NEG, N_PASSAGES = 12, 30, 4


def collate(items):
    return {"groups": [(it["query"], tuple(it["texts"])) for it in items], "x": torch.ones(len(items), 1)}


class GroupsDataModule(CorpusDataModule):
    def __init__(self, num_workers: int) -> None:
        super().__init__()
        corpus = Corpus.from_passages(Passage(f"d{i}", "", f"text {i}") for i in range(500))
        examples = [
            TrainingExample(
                f"q{q}",
                f"query {q}",
                ScoredDocs([f"d{q}"], [1.0]),
                ScoredDocs([f"d{50 + q * N_NEG + i}" for i in range(N_NEG)], [0.0] * N_NEG),
            )
            for q in range(N_QUERIES)
        ]
        self.train_dataset = GroupDataset(examples, corpus, N_PASSAGES, seed=7)
        self.val_dataset = None
        self.collator = collate
        self.batch_size = 4
        self.num_workers = num_workers


class Recorder(pl.LightningModule):
    """Records every group it trains on, by epoch; samples through `set_sampling_epoch` as the real modules."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.groups: dict[int, set] = defaultdict(set)

    def on_train_epoch_start(self) -> None:
        set_sampling_epoch(self)

    def training_step(self, batch, batch_idx):
        self.groups[self.current_epoch] |= set(batch["groups"])
        return (batch["x"] * self.w).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, max_epochs: int, num_workers: int, ckpt_path=None) -> Recorder:
    module = Recorder()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)],
    )
    trainer.fit(module, datamodule=GroupsDataModule(num_workers), ckpt_path=ckpt_path)
    return module


def test_first_resumed_epoch_samples_that_epochs_groups(tmp_path, num_workers=2):
    torch.set_num_threads(1)
    uninterrupted = fit(tmp_path / "a", max_epochs=3, num_workers=num_workers)
    first = fit(tmp_path / "b", max_epochs=2, num_workers=num_workers)  # epochs 0 and 1, then stops
    last = tmp_path / "b" / "ckpt" / "last.ckpt"
    resumed = fit(tmp_path / "b", max_epochs=3, num_workers=num_workers, ckpt_path=last)
    assert set(resumed.groups) == {2}  # resumed after epochs 0 and 1
    # the window moves each epoch, so a stale epoch would show
    assert len({frozenset(uninterrupted.groups[e]) for e in range(3)}) == 3
    assert first.groups[1] == uninterrupted.groups[1]
    assert resumed.groups[2] == uninterrupted.groups[2]
    assert len(resumed.groups[2]) == N_QUERIES
