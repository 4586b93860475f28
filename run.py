"""simlm entry point: `.venv/bin/python run.py stage=<stage> data=<data> [+experiment=<name>] [overrides]`."""

import os
from pathlib import Path

os.environ.setdefault("SIMLM_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from simlm.config import register_resolvers, warn_deprecated_options  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    """Compose the config and dispatch `cfg.stage` to its `run(cfg)`."""
    from simlm.stages import run_stage

    warn_deprecated_options()
    return run_stage(cfg)


if __name__ == "__main__":
    main()
