"""Training checkpoints: Lightning `.ckpt` files and DeepSpeed checkpoint directories.

With `trainer=deepspeed*` Lightning saves every checkpoint as a directory (`<name>.ckpt/`, holding
`latest` and `checkpoint/*model_states.pt` + one `*optim_states.pt` per rank). Its weights are
consolidated with DeepSpeed's zero_to_fp32 utilities into one fp32 state dict (ZeRO-2 and ZeRO-3 alike).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


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
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = _deepspeed_tag_dir(path).name
        return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    raise FileNotFoundError(f"{path}: neither a Lightning .ckpt file nor a DeepSpeed checkpoint directory")


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The module's `hyper_parameters` saved in a checkpoint (Lightning stores them in DeepSpeed's too)."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        tag = _deepspeed_tag_dir(path).name
        ckpt = torch.load(_model_states_file(path, tag), map_location="cpu", weights_only=False)
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
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
