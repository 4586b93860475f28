"""Hydra sweeps: a 2-job grid over run.py, the Optuna sweeper, and the SLURM launcher config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def run_py(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIMLM_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_grid_sweep_writes_one_metrics_file_per_job(tmp_path, small_beir, cache_dir):
    res = run_py(
        "--multirun",
        "stage=bm25",
        "data=beir",
        f"data.root={small_beir}",
        "stage.negatives.enabled=false",
        "stage.bm25.k1=0.9,1.5",
        "optimized_metric=test/ndcg@10",
        f"paths.multirun_dir={tmp_path / 'multirun'}",
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun" / "bm25").glob("*/*/metrics.json"))  # multirun/<stage>/<time>/<job>/
    assert [p.parent.name for p in jobs] == ["0", "1"]
    overrides = [(p.parent / ".hydra" / "overrides.yaml").read_text() for p in jobs]
    assert "stage.bm25.k1=0.9" in overrides[0] and "stage.bm25.k1=1.5" in overrides[1]
    assert all("ndcg@10" in json.loads(p.read_text())["test"] for p in jobs)


def test_optuna_sweeper_maximises_the_optimized_metric(tmp_path, small_beir, cache_dir):
    res = run_py(
        "stage=bm25",
        "hparams_search=bm25_optuna",
        "data=beir",
        f"data.root={small_beir}",
        "hydra.sweeper.n_trials=3",
        f"paths.multirun_dir={tmp_path / 'multirun'}",
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (best,) = (tmp_path / "multirun" / "bm25").glob("*/optimization_results.yaml")
    text = best.read_text()
    assert "best_value" in text and "stage.bm25.k1" in text
    values = [json.loads(p.read_text())["test"]["ndcg@10"] for p in best.parent.glob("*/metrics.json")]
    assert len(values) == 3
    assert f"best_value: {max(values)}" in text


def test_submitit_launcher_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4", "trainer=ddp"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 4
