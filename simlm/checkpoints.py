"""Training checkpoints: Lightning `.ckpt` files and DeepSpeed checkpoint directories.

With `trainer=deepspeed*` Lightning saves every checkpoint as a directory (`<name>.ckpt/`, holding
`latest` and `checkpoint/*model_states.pt` + one `*optim_states.pt` per rank). Its weights are
consolidated with DeepSpeed's zero_to_fp32 utilities into one fp32 state dict (ZeRO-2 and ZeRO-3 alike).

Every file is unpickled with `torch.load(weights_only=True)` and an allow-list of the few classes these
checkpoints legitimately hold (`_safe_globals()`): a crafted file naming anything else (a `__reduce__`
payload calling `os.system`, say) is refused with `UnsafeCheckpointError` before any of it runs.
DeepSpeed's zero_to_fp32 loads its files with `weights_only=False`; it runs here with its `torch.load`
replaced by the same safe loader.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds Python objects outside the allow-list: refused, nothing of it was run."""


def _safe_globals() -> list[Any]:
    """Classes a Lightning / DeepSpeed checkpoint of this project may hold besides tensors and plain data.

    Checked against real checkpoints (`torch.serialization.get_unsafe_globals_in_checkpoint`): the
    project's `.ckpt` files and DeepSpeed model states need none (hyper-parameters are plain containers:
    `stage=...` instantiates modules with `_convert_="all"`, and Lightning stores `dict(hparams)`);
    hyper-parameters saved as omegaconf containers (a module built from a `DictConfig`) need the first
    group; DeepSpeed's ZeRO optimizer states (read by zero_to_fp32) the second. (Lightning's
    `AttributeDict` cannot be read with `weights_only=True` at all, allow-listed or not.)
    """
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, BytesNode, EnumNode, FloatNode, IntegerNode, StringNode

    allowed: list[Any] = [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        BooleanNode,
        BytesNode,
        EnumNode,
        FloatNode,
        IntegerNode,
        StringNode,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        int,
        float,
        str,
        bool,
    ]
    with contextlib.suppress(ImportError):  # DeepSpeed is optional
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    return allowed


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """`torch.load(path, weights_only=True)` with the checkpoint allow-list; refuses anything else."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", str(err), re.S)
        reason = (found.group(1) if found else str(err).strip().split("\n", 1)[0]).strip()
        reason = " ".join(reason.split(" Please use", 1)[0].split()).rstrip(".")
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds Python objects a SimLM/Lightning checkpoint never contains "
            f"({reason}). Checkpoints are read with torch.load(weights_only=True) and a fixed allow-list; "
            "load only checkpoints written by training runs you trust"
        ) from None


class _SafeTorch:
    """Stands in for the `torch` module inside zero_to_fp32: everything is torch's, except `load`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, map_location: Any = None, *args: Any, mmap: bool | None = None, **kwargs: Any) -> Any:
        return safe_load(f, map_location=map_location or "cpu", mmap=mmap)


@contextlib.contextmanager
def _safe_zero_to_fp32() -> Iterator[Any]:
    """DeepSpeed's zero_to_fp32 module with its `torch.load` calls going through `safe_load`."""
    from deepspeed.utils import zero_to_fp32

    original = zero_to_fp32.torch
    zero_to_fp32.torch = _SafeTorch()
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = original


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a DeepSpeed checkpoint directory (a `latest` tag file or `<tag>/*model_states.pt`)."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*/*mp_rank_00_model_states.pt")))


def _deepspeed_tag_dir(path: Path) -> Path:
    """The tag folder (`checkpoint/` for Lightning) named by `latest`, else the only one with model states."""
    latest = path / "latest"
    if latest.is_file():
        return path / latest.read_text().strip()
    return _model_states_file(path, "*").parent


def _model_states_file(path: Path, tag: str) -> Path:
    """Rank 0's `*mp_rank_00_model_states.pt` (module states + Lightning's client state)."""
    found = sorted(path.glob(f"{tag}/*mp_rank_00_model_states.pt"))
    if not found:
        raise FileNotFoundError(f"{path}: no {tag}/*mp_rank_00_model_states.pt (not a DeepSpeed checkpoint)")
    return found[0]


def checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The LightningModule state dict of a `.ckpt` file or (consolidated to fp32) of a DeepSpeed directory."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        tag = _deepspeed_tag_dir(path).name
        with _safe_zero_to_fp32() as zero_to_fp32:
            return zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    if path.is_file():
        ckpt = safe_load(path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
        return ckpt["state_dict"]
    raise FileNotFoundError(f"{path}: neither a Lightning .ckpt file nor a DeepSpeed checkpoint directory")


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The module's `hyper_parameters` saved in a checkpoint (Lightning stores them in DeepSpeed's too)."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        tag = _deepspeed_tag_dir(path).name
        ckpt = safe_load(_model_states_file(path, tag))
    else:
        ckpt = safe_load(path, mmap=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (a {type(ckpt).__name__}, not a dict)")
    return dict(ckpt.get("hyper_parameters") or {})


def _is_zero3_partitioned(module: torch.nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _unpartition_zero3(module: torch.nn.Module) -> None:
    """Give ZeRO-3 parameters full-size storage again (to be filled by `load_state_dict`).

    DeepSpeed's forward hooks (which gather partitions) are removed, as Lightning does before re-initialising
    DeepSpeed for inference: the module then behaves as a plain torch module.
    """
    from pytorch_lightning.strategies.deepspeed import remove_module_hooks

    remove_module_hooks(module)
    for param in module.parameters():
        if hasattr(param, "ds_id"):
            param.data = torch.empty(param.ds_shape, dtype=param.dtype, device="cpu")


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict `load_state_dict`, except that aliases of loaded tensors may be missing.

    A shared query/passage encoder is registered under both names; DeepSpeed's consolidated state dict
    holds each parameter once.
    """
    missing, unexpected = module.load_state_dict(state, strict=False)
    tensors = module.state_dict(keep_vars=True)
    loaded = {id(tensors[k]) for k in state if k in tensors}
    missing = [k for k in missing if id(tensors[k]) not in loaded]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the module: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def load_checkpoint_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load the weights of a `.ckpt` file or DeepSpeed directory into `module`, in place.

    DeepSpeed checkpoints hold fp32 master weights: the module is cast to fp32 first (DeepSpeed fp16
    training leaves it in half precision). A ZeRO-3 partitioned module is made whole again.
    """
    state = checkpoint_state_dict(path)
    if is_deepspeed_checkpoint(path):
        if _is_zero3_partitioned(module):
            _unpartition_zero3(module)
        module.float()
    load_module_state(module, state)


def load_best_weights(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """Load the best checkpoint's weights into `pl_module` (if a monitored checkpoint exists).

    Returns the checkpoint loaded, or None when the module keeps its last weights. Under ZeRO-3 the last
    weights are partitioned across ranks, so the last checkpoint is loaded instead.
    """
    callback = trainer.checkpoint_callback
    ckpt = getattr(callback, "best_model_path", "") or ""
    if not (ckpt and Path(ckpt).exists()) and _is_zero3_partitioned(pl_module):
        ckpt = getattr(callback, "last_model_path", "") or ""
        if not (ckpt and Path(ckpt).exists()):
            raise RuntimeError(
                "ZeRO-3 leaves the weights partitioned across ranks and no checkpoint exists to consolidate: "
                "keep callbacks.model_checkpoint (save_last: true)"
            )
    if ckpt and Path(ckpt).exists():
        load_checkpoint_weights(pl_module, ckpt)
        return ckpt
    return None
