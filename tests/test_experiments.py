"""Every experiment recipe composes and trains/runs 2 steps with a tiny model and small data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simlm.stages import run_stage
from tests.conftest import PROJECT_ROOT

EXPERIMENTS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))


def test_every_experiment_is_covered():
    assert len(EXPERIMENTS) >= 8


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_two_steps_with_a_tiny_model(
    name, compose, tmp_path, small_beir, small_beir_bm25, tiny_bert
):
    recipe = compose(f"+experiment={name}")
    stage = recipe.stage.name
    overrides = [
        f"+experiment={name}",
        "data=beir",
        f"data.root={small_beir}",
        "data.name=small",
        "data.val_split=dev",
        "data.eval_split=test",
        f"model.name_or_path={tiny_bert}",
        "trainer=cpu",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32-true",
    ]
    if stage != "bm25":
        overrides += ["++trainer.max_steps=2", "++trainer.limit_val_batches=2", "trainer.max_epochs=1"]
    if stage in ("biencoder", "kd_biencoder", "train_reranker"):
        overrides += [
            f"stage.datamodule.train_file={small_beir_bm25 / 'train.jsonl'}",
            "stage.datamodule.batch_size=2",
            "stage.datamodule.num_workers=0",
        ]
    if stage in ("biencoder", "kd_biencoder"):
        overrides += [
            "stage.callbacks.retrieval_evaluation.max_passages=100",
            "stage.final_eval.enabled=false",
        ]
    if stage == "kd_biencoder":  # BM25 scores stand in for teacher logits
        overrides += ["stage.train_n_passages=4"]
    if stage == "train_reranker":
        overrides += [
            "stage.train_n_passages=4",
            "stage.module.forward_factor=2",
            "stage.datamodule.val_depth=5",
            "stage.datamodule.val_max_queries=5",
            "stage.datamodule.val_run_file=null",  # the recipe's MS MARCO dev run does not exist here
        ]
    if stage == "rlm":
        overrides += [
            "stage.datamodule.batch_size=2",
            "stage.module.generator.name_or_path=null",
            "stage.module.generator.freeze=false",  # no ELECTRA generator offline
            "stage.datamodule.num_eval_samples=16",
        ]
    if stage == "pipeline":  # every step, 2 training steps each
        overrides += [f"stage.work_dir={tmp_path / 'work'}"]
    cfg = compose(*overrides, output_dir=tmp_path / name)
    assert cfg.stage.name == stage  # the recipe's stage survives the tiny overrides
    run_stage(cfg)
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()
    if stage == "pipeline":
        rows = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["rows"]
        assert [r["step"] for r in rows][-1] == "kd_biencoder"
    elif stage != "bm25":
        assert (Path(cfg.paths.output_dir) / "model").is_dir()
