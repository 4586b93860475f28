"""The one training stage: instantiate `stage.module` + `stage.datamodule`, callbacks, loggers, Trainer; fit;
save the best model as a Hugging Face folder; evaluate it on the validation split and `data.eval_split`.

rlm, biencoder, kd_biencoder and train_reranker differ only in their `conf/stage/<name>.yaml`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from simlm.checkpoints import load_best_weights
from simlm.data.folds import write_trained_queries
from simlm.loggers import log_run_config
from simlm.runtime import resolve_device, resolve_precision
from simlm.stages import Metrics, format_metrics

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group, skipping those with `enabled: false`."""
    out = []
    for conf in (group or {}).values():
        if isinstance(conf, DictConfig) and "_target_" in conf and conf.get("enabled", True):
            kwargs = {k: v for k, v in conf.items() if k != "enabled"}
            out.append(instantiate(DictConfig(kwargs)))
    return out


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback]) -> pl.Trainer:
    """`cfg.trainer` with the `callbacks` group, the stage's own callbacks and the `logger` group."""
    callbacks = _instantiate_group(cfg.get("callbacks")) + extra_callbacks
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger (logger=none)
        callbacks = [cb for cb in callbacks if not isinstance(cb, pl.callbacks.LearningRateMonitor)]
    log_run_config(loggers, cfg)
    overrides: dict[str, Any] = {}
    if str(cfg.trainer.get("precision")).lower() == "auto":  # Lightning takes no `auto`: choose here
        device_type = resolve_device(cfg.trainer.get("accelerator", "auto")).type
        overrides["precision"] = resolve_precision("auto", device_type)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def run(cfg: DictConfig) -> Metrics:
    """Fit the stage's LightningModule and return `{val: ..., <eval_split>: ...}` metrics."""
    pl.seed_everything(int(cfg.seed), workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.stage.datamodule, _convert_="none")
    module = instantiate(
        cfg.stage.module, _convert_="all"
    )  # plain containers: checkpoints load with weights_only
    stage_callbacks = _instantiate_group(cfg.stage.get("callbacks"))
    trainer = build_trainer(cfg, stage_callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.stage.get("ckpt_path"))
    if trainer.interrupted:
        raise KeyboardInterrupt(
            "training was interrupted; rerun with stage.ckpt_path=<.../checkpoints/last.ckpt>"
        )

    best = load_best_weights(trainer, module)
    log.info("best checkpoint: %s", best or "(last weights; no monitored checkpoint)")
    metrics: Metrics = {}
    if trainer.is_global_zero:
        module.save_model(out_dir / "model", datamodule.tokenizer)
        if getattr(datamodule, "train_fold", None) is not None:  # a cross-fitted teacher checks it
            trained = (ex.query_id for ex in datamodule.train_dataset.examples)
            write_trained_queries(out_dir / "model", trained, datamodule.train_fold)
        val = {
            k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        if val:
            metrics["val"] = val
        final = cfg.stage.get("final_eval")
        if final and final.enabled:
            mining = [cb for cb in trainer.callbacks if getattr(cb, "embeddings_dir", None)]
            emb_dir = mining[0].embeddings_dir if mining else None
            metrics.update(evaluate_model(module, datamodule, cfg, out_dir, emb_dir, trainer.precision))
        print(format_metrics(metrics, title=f"{cfg.stage.name} on {cfg.data.name}"))
    return metrics


def evaluate_model(
    module: pl.LightningModule,
    datamodule: Any,
    cfg: DictConfig,
    out_dir: Path,
    embeddings_dir: Path | None = None,
    precision: str | None = None,
) -> Metrics:
    """Retrieve for the validation split (`final_eval.validation`, default true) and `data.eval_split`
    with the trained encoder; write their run files; return their metrics.

    The corpus is encoded once for all splits; `embeddings_dir`: the corpus already encoded by this model
    (the mining callback's shards), reused instead.
    `precision`: the encoding's (the trainer's, so evaluation runs on the path training took).
    """
    from simlm.evaluation import evaluate
    from simlm.retrieval.dense import dense_retrieve, encode_passages
    from simlm.retrieval.store import load_shards
    from simlm.stages.common import report_splits, write_run_files

    final = cfg.stage.final_eval
    data = datamodule.data
    if embeddings_dir is not None:
        shards = list(load_shards(embeddings_dir))
    else:
        shards = encode_passages(
            module.encoder,
            datamodule.tokenizer,
            data.corpus,
            batch_size=final.batch_size,
            precision=precision,
        )
    metrics: Metrics = {}
    for split in report_splits(data, cfg.data.eval_split, validation=bool(final.get("validation", True))):
        run_ = dense_retrieve(
            module.encoder,
            datamodule.tokenizer,
            data.corpus,
            data.queries(split),
            final.top_k,
            batch_size=final.batch_size,
            precision=precision,
            shards=shards,
        )
        write_run_files(out_dir, split, run_, tag=cfg.stage.name)
        scores = evaluate(run_, data, split)
        if scores is not None:
            metrics[split] = scores
    return metrics
