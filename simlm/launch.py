"""`trainer.devices=N` for the inference stages: N processes on this machine, without torchrun.

Under torchrun (or any launcher that sets `WORLD_SIZE`) every process already runs the stage and joins
the group in `Runtime.process_group`. Without one, `launch(fn, cfg)` with `trainer.devices=N` runs
`fn(cfg)` here as rank 0 and in N-1 spawned processes (fresh interpreters) as ranks 1..N-1, each with
torchrun's environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), so the
stage's code is the same either way: rank r uses `cuda:r` on GPUs; on a CPU each process gets its
share of the cores. One machine only: several nodes need torchrun or SLURM (`trainer.num_nodes`).
The children get the config resolved here (they have no Hydra context) and log to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from simlm.runtime import is_distributed

log = logging.getLogger(__name__)

T = TypeVar("T")


def visible_gpus(cfg: Any) -> int:
    """GPUs the processes of `trainer.accelerator` may use (0 on a CPU run)."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto") or "auto").lower()
    return torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0


def process_count(cfg: Any) -> int:
    """How many processes `trainer.devices` asks for (`auto`/-1: every visible GPU, one on a CPU)."""
    devices = (cfg.get("trainer") or {}).get("devices", 1)
    gpus = visible_gpus(cfg)
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return max(gpus, 1)
    if "," in text:  # Lightning's "0,1": device indices
        return len([p for p in text.split(",") if p.strip()])
    count = int(text)
    if gpus and count > gpus:
        raise ValueError(f"trainer.devices={count}, but {gpus} GPU(s) are visible")
    return count


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _child(fn: Callable[[DictConfig], Any], plain: dict[str, Any], rank: int, threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    fn(OmegaConf.create(plain))
    # The work is done and its files are renamed into place. Skip interpreter finalisation: there,
    # gloo's transport threads can abort the process (SIGABRT, "terminate called without an active
    # exception") while rank 0 is still leaving the group, which would report a finished rank as failed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """`fn(cfg)` on `trainer.devices` processes (this one is rank 0; see the module docstring), or here
    alone when one process is asked for or a launcher already started several. Returns rank 0's result;
    a failed child raises a `RuntimeError` naming its rank once rank 0 is done."""
    n = process_count(cfg)
    if n <= 1 or is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return fn(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    on_cpu = visible_gpus(cfg) == 0
    threads = max(1, (os.cpu_count() or 1) // n) if on_cpu else torch.get_num_threads()
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(n),
        "LOCAL_WORLD_SIZE": str(n),
        "OMP_NUM_THREADS": str(threads),
    }
    context = multiprocessing.get_context("spawn")
    children = []
    for rank in range(1, n):
        with _environment({**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}):  # inherited at spawn
            child = context.Process(target=_child, args=(fn, plain, rank, threads), name=f"simlm-rank{rank}")
            child.start()
        children.append(child)
    log.info("trainer.devices=%d: ranks 1-%d started (%d CPU threads each)", n, n - 1, threads)
    previous_threads = torch.get_num_threads()
    try:
        with _environment({**env, "RANK": "0", "LOCAL_RANK": "0"}):
            torch.set_num_threads(threads)
            result = fn(cfg)
    except BaseException:
        for child in children:
            child.terminate()
            child.join()
        raise
    finally:
        torch.set_num_threads(previous_threads)
    for child in children:
        child.join()
    failed = [(rank, c.exitcode) for rank, c in enumerate(children, start=1) if c.exitcode != 0]
    if failed:
        details = ", ".join(f"rank {rank} exit code {code}" for rank, code in failed)
        raise RuntimeError(f"{details} (of trainer.devices={n}); the traceback is above in stderr")
    return result
