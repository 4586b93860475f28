"""simlm entry point: `.venv/bin/python run.py stage=<stage> data=<data> [+experiment=<name>] [overrides]`."""

import os
from pathlib import Path

os.environ.setdefault("SIMLM_ROOT", str(Path(__file__).resolve().parent))
# Offline unless you opt in: SIMLM_ONLINE=1 (or HF_HUB_OFFLINE=0 set yourself) lets transformers reach the Hub.
if os.environ.get("SIMLM_ONLINE", "").strip().lower() not in ("1", "true", "yes"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from simlm.config import register_resolvers, warn_deprecated_options  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    """Compose the config and dispatch `cfg.stage` to its `run(cfg)`; a failure ends in one clear line."""
    from simlm.failures import report_failure, run_log_file
    from simlm.stages import run_stage

    warn_deprecated_options()
    try:
        return run_stage(cfg)
    except Exception as error:
        report_failure(error, stage=cfg.stage.get("name"), log_file=run_log_file())


if __name__ == "__main__":
    main()
