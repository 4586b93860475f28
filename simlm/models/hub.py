"""Where a model comes from: a local folder or a Hugging Face hub id, checked before transformers tries.

Every model loader (bi-encoder, cross-encoder, RLM encoder and generator) calls `check_model_source`
first, so a mistyped path says so ("neither a folder nor a Hugging Face hub id") instead of
transformers' repo-id validation message, and a hub id that is not cached while offline fails at once
instead of after the Hub client's retries. `run.py` runs offline (`HF_HUB_OFFLINE=1`) unless the user
opts in to the network with `SIMLM_ONLINE=1` (or sets `HF_HUB_OFFLINE=0` explicitly).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ModelSourceError", "check_model_source", "hub_offline"]

_TRUE = ("1", "ON", "YES", "TRUE")


class ModelSourceError(OSError):
    """A model path that is no folder, or a hub id that cannot be loaded (offline and not cached)."""


def hub_offline() -> bool:
    """Whether the Hugging Face Hub may not be reached (`HF_HUB_OFFLINE`, read now and at hub import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_model_source(name_or_path: str | Path, key: str = "model.name_or_path") -> None:
    """Raise `ModelSourceError` naming `key` unless `name_or_path` is a folder or a loadable hub id.

    A loadable hub id: well formed, and (while offline) in the local Hugging Face cache.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = str(name_or_path)
    path = Path(name)
    if path.is_dir():
        return
    where = "" if path.is_absolute() else f" (relative paths are read from {Path.cwd()})"
    if path.exists():
        raise ModelSourceError(
            f"{key} {name!r} is a file, not a model folder: pass the folder holding config.json and the "
            "weights, or a Hugging Face hub id"
        )
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelSourceError(
            f"{key} {name!r} is neither a folder nor a Hugging Face hub id: no such directory{where}"
        ) from None
    if hub_offline() and not _cached(name):
        raise ModelSourceError(
            f"{key} {name!r} is not a folder{where}, and as a Hugging Face hub id it is not in the local "
            "cache while offline (HF_HUB_OFFLINE=1; run.py runs offline unless SIMLM_ONLINE=1): pass a "
            f"model folder, or download it once with SIMLM_ONLINE=1"
        )
