"""Experiment loggers: Weights & Biases (offline by default, resumable run ids) and config logging.

`conf/logger/wandb.yaml` builds its logger with `wandb_logger`:
- mode: `WANDB_MODE` when set (online, offline, disabled), else offline: runs land in
  `<run dir>/wandb/offline-run-*` and upload later with `wandb sync <that folder>`;
- the stage is the run's `job_type` (and its default name); `group` gathers the stages of one experiment.
  Metric names stay Lightning's (`train/loss`, `val/ndcg@10`, ...), so one chart compares runs of a stage;
- the run id is kept in `<run dir>/wandb_run_id`; resuming with `stage.ckpt_path=<run dir>/checkpoints/...`
  reuses the id of that run, so the resumed training continues the same wandb run.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"


class FinishingWandbLogger(WandbLogger):
    """WandbLogger that finishes its run when training ends (flushing the run files), so that a later stage
    of the same process starts its own run instead of appending to this one."""

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status in ("success", "finished") else 1)
            self._experiment = None


def find_run_id(resume_from: str | Path | None) -> str | None:
    """The wandb run id stored in the run dir of the checkpoint `resume_from` (`<run dir>/checkpoints/x.ckpt`)."""
    if not resume_from:
        return None
    for folder in list(Path(resume_from).parents)[:3]:
        path = folder / RUN_ID_FILE
        if path.is_file():
            return path.read_text().strip() or None
    return None


def new_run_id() -> str:
    """A fresh 8-character run id (lowercase letters and digits, as wandb's own)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_logger(
    save_dir: str,
    project: str = "simlm",
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    tags: list[str] | None = None,
    offline: bool | None = None,
    resume_from: str | None = None,
    log_model: bool | str = False,
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger writing under `save_dir`, offline unless `WANDB_MODE` (or `offline=false`) says otherwise.

    The run id comes from `resume_from`'s run dir when resuming, else it is new; it is written to
    `<save_dir>/wandb_run_id` (rank 0) for a later resume.
    """
    if offline is None:
        offline = "WANDB_MODE" not in os.environ
    if offline:
        kwargs["mode"] = "offline"  # not WandbLogger(offline=True), which rewrites WANDB_MODE process-wide
    run_id = find_run_id(resume_from) or new_run_id()
    if resume_from and run_id:
        log.info("wandb: resuming run %s", run_id)
    if rank_zero_only.rank == 0:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / RUN_ID_FILE).write_text(run_id + "\n")
    return FinishingWandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        id=run_id,
        group=group,
        job_type=job_type,
        tags=list(tags) if tags else None,
        log_model=log_model,
        **kwargs,
    )


def config_to_log(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain containers (interpolations resolved where they can be)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as e:  # e.g. a resolver that only works inside a Hydra run
        log.warning("logging the config unresolved (%s)", e)
        return OmegaConf.to_container(cfg, resolve=False)


def log_run_config(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    """Log the composed config as every logger's hyper-parameters (wandb config, hparams.yaml, TensorBoard)."""
    loggers = list(loggers)
    if not loggers:
        return
    params = config_to_log(cfg)
    for logger in loggers:
        logger.log_hyperparams(params)
