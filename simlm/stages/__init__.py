"""Stages: one `run(cfg) -> {split: {metric: value}}` per stage, dispatched by `run.py`."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig

from simlm.data.io import write_json
from simlm.runtime import is_main_process

log = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float]]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and (if already imported or installed) torch."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def run_stage(cfg: DictConfig) -> float | None:
    """Run `cfg.stage`, write `metrics.json` into the run dir and return `cfg.optimized_metric` if set."""
    from simlm.stages.params import check_stage_params

    check_stage_params(cfg)  # types and ranges of stage parameters and trainer.devices, first
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(int(cfg.seed))
    entry = get_method(cfg.stage.entry)
    started = time.perf_counter()
    metrics: Metrics = entry(cfg) or {}
    log.info(
        "stage %s finished in %.1f s; outputs in %s", cfg.stage.name, time.perf_counter() - started, out_dir
    )
    if is_main_process():  # under DDP / torchrun every rank runs the stage; one writes the results
        write_json(out_dir / "metrics.json", metrics)
    return optimized_value(metrics, cfg.get("optimized_metric"))


def optimized_value(metrics: Metrics, name: str | None) -> float | None:
    """Look up `split/metric` (e.g. `test/ndcg@10`) or a metric of the only split, for sweepers."""
    if not name:
        return None
    split, _, metric = name.rpartition("/")
    candidates = [metrics[split]] if split in metrics else list(metrics.values())
    for block in candidates:
        if metric in block:
            return float(block[metric])
    raise KeyError(f"optimized_metric {name!r} not in the stage's metrics {sorted(metrics)}")


def format_metrics(metrics: Metrics, title: str = "") -> str:
    """A small fixed-width table of `{split: {metric: value}}`."""
    names: list[str] = []
    for block in metrics.values():
        names += [m for m in block if m not in names]
    widths = [max(len(n), 8) + 2 for n in names]
    split_width = max([len("split"), *(len(s) for s in metrics)]) + 2
    lines = [title] if title else []
    lines.append("split".ljust(split_width) + "".join(n.rjust(w) for n, w in zip(names, widths)))
    for split, block in metrics.items():
        cells = "".join(_cell(block.get(n)).rjust(w) for n, w in zip(names, widths))
        lines.append(split.ljust(split_width) + cells)
    return "\n".join(lines)


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))
