"""The one training stage: instantiate `stage.module` + `stage.datamodule`, callbacks, loggers, Trainer; fit;
save the best model as a Hugging Face folder; evaluate it on the validation split and `data.eval_split`.

rlm, biencoder, kd_biencoder and train_reranker differ only in their `conf/stage/<name>.yaml`.
"""

from __future__ import annotations

import logging
import math
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


def epochs_for_budget(
    num_examples: int,
    batch_size: int,
    world_size: int = 1,
    accumulate: int = 1,
    min_steps: int = 1,
    max_epochs: int | None = None,
) -> tuple[int, int]:
    """(epochs, optimizer steps per epoch) so that training takes at least `min_steps` optimizer steps.

    Steps per epoch follow the loaders: each rank gets ceil(n / world) examples, drops the last partial
    batch when it has a full one, and steps every `accumulate` batches (a partial window steps too).
    Epochs are whole and at most `max_epochs` (None: no cap), so a small collection trains for more epochs
    and a large one for one.
    """
    if num_examples < 1 or batch_size < 1 or world_size < 1 or accumulate < 1 or min_steps < 1:
        raise ValueError(
            "stage.budget needs positive sizes: "
            f"examples={num_examples} batch={batch_size} world={world_size} accumulate={accumulate} "
            f"min_steps={min_steps}"
        )
    per_rank = math.ceil(num_examples / world_size)
    batches = per_rank // batch_size if per_rank >= batch_size else 1
    steps = math.ceil(batches / accumulate)
    epochs = math.ceil(min_steps / steps)
    if max_epochs is not None:
        epochs = min(epochs, int(max_epochs))
    return max(1, epochs), steps


def apply_budget(trainer: pl.Trainer, datamodule: Any, budget: DictConfig) -> int:
    """Set the trainer's epochs from `stage.budget` ({min_steps, max_epochs}) and the training set's size."""
    unknown = set(budget) - {"min_steps", "max_epochs"}
    if unknown:
        raise ValueError(f"stage.budget: unknown keys {sorted(unknown)} (known: min_steps, max_epochs)")
    datamodule.setup("fit")  # idempotent: Lightning's own call finds the data loaded
    epochs, steps = epochs_for_budget(
        len(datamodule.train_dataset),
        int(datamodule.batch_size),
        trainer.world_size,
        int(trainer.accumulate_grad_batches),
        int(budget.get("min_steps") or 1),
        budget.get("max_epochs"),
    )
    trainer.fit_loop.max_epochs = epochs
    log.info(
        "budget: %d training examples, %d steps per epoch -> %d epochs (min_steps=%s, max_epochs=%s)",
        len(datamodule.train_dataset),
        steps,
        epochs,
        budget.get("min_steps"),
        budget.get("max_epochs"),
    )
    return epochs


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
    if cfg.stage.get("budget"):
        apply_budget(trainer, datamodule, cfg.stage.budget)
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
