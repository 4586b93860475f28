"""Experiment tracking: offline wandb runs (config, metrics, resumed run ids), TensorBoard, CSV."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from simlm.loggers import RUN_ID_FILE, find_run_id, wandb_logger
from simlm.stages import run_stage
from tests.test_biencoder import biencoder_overrides


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def offline_runs(out: Path) -> list[Path]:
    return sorted(out.glob("wandb/offline-run-*"))


def read_wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline run's `run-<id>.wandb` file (a LevelDB-style log of records):
    offline runs keep their config and metrics only there, until `wandb sync`."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, records = 7, 32768, [], []  # 7-byte file header; 32 KiB blocks of chunks
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def wandb_contents(run_dir: Path) -> tuple[Any, dict[str, Any], set[str]]:
    """(run record, config {key: value}, names of the logged metrics) of an offline run."""
    records = read_wandb_records(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r, k in zip(records, kinds) if k == "run"]
    config = {
        c.key: json.loads(c.value_json)
        for r, k in zip(records, kinds)
        if k == "config"
        for c in r.config.update
    }
    metrics = {
        item.key or "/".join(item.nested_key)
        for r, k in zip(records, kinds)
        if k == "history"
        for item in r.history.item
    }
    return run, config, metrics


def test_wandb_mode_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = wandb_logger(str(tmp_path / "a"), name="biencoder", job_type="biencoder")
    assert logger._wandb_init["mode"] == "offline"
    assert (tmp_path / "a" / RUN_ID_FILE).read_text().strip() == logger._wandb_init["id"]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert "mode" not in wandb_logger(str(tmp_path / "b"))._wandb_init  # wandb reads WANDB_MODE itself
    assert wandb_logger(str(tmp_path / "c"), offline=True)._wandb_init["mode"] == "offline"
    # resuming from <run dir>/checkpoints/last.ckpt finds that run dir's id
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert find_run_id(ckpt) == logger._wandb_init["id"]
    assert wandb_logger(str(tmp_path / "d"), resume_from=str(ckpt))._wandb_init["id"] == find_run_id(ckpt)
    assert find_run_id(tmp_path / "elsewhere" / "x.ckpt") is None


@pytest.mark.timeout(600)
def test_wandb_offline_run_has_config_metrics_and_resumes(
    compose, tmp_path, small_beir, small_beir_bm25, tiny_bert, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default: offline
    base = biencoder_overrides(
        small_beir,
        tiny_bert,
        small_beir_bm25 / "train.jsonl",
        "stage.final_eval.enabled=false",
        "logger=wandb",
        "trainer.max_epochs=1",
        "stage.datamodule.max_train_examples=32",
    )
    out = tmp_path / "run"
    run_stage(compose(*base, output_dir=out))
    (run_dir,) = offline_runs(out)
    run_id = (out / RUN_ID_FILE).read_text().strip()
    run, config, metrics = wandb_contents(run_dir)
    assert run.run_id == run_id and run_dir.name.endswith(run_id)
    assert run.job_type == "biencoder" and run.display_name == "biencoder"
    # the composed config, and the module's own hyper-parameters
    assert config["stage"]["name"] == "biencoder" and config["stage"]["module"]["lr"] == pytest.approx(1e-3)
    assert config["data"]["root"] == str(small_beir)
    assert config["temperature"] == pytest.approx(0.05)
    assert {"train/loss", "val/ndcg@10", "trainer/global_step"} <= metrics

    # resume from the checkpoint into another run dir: same wandb run id
    out2 = tmp_path / "resumed"
    run_stage(
        compose(
            *base,
            "trainer.max_epochs=2",
            f"stage.ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            output_dir=out2,
        )
    )
    (resumed,) = offline_runs(out2)
    assert wandb_contents(resumed)[0].run_id == run_id and (out2 / RUN_ID_FILE).read_text().strip() == run_id


def test_tensorboard_and_csv_loggers_compose_and_write(compose, tmp_path):
    pytest.importorskip("tensorboard")
    from hydra.utils import instantiate

    from simlm.loggers import log_run_config

    for name, pattern in (
        ("tensorboard", "tensorboard/version_0/events.out.tfevents.*"),
        ("csv", "csv/version_0/*"),
    ):
        out = tmp_path / name
        cfg = compose("stage=bm25", f"logger={name}", output_dir=out)
        (logger,) = [instantiate(c) for c in cfg.logger.values()]
        log_run_config([logger], cfg)
        logger.log_metrics({"train/loss": 1.5}, step=0)
        logger.finalize("success")
        assert list(out.glob(pattern)), name
    hparams = yaml.safe_load((tmp_path / "csv" / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["stage"]["name"] == "bm25"
