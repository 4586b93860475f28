"""Shared fixtures: composed Hydra configs, tiny models, small data sets. Nothing touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCIFACT = (PROJECT_ROOT / ".." / "shared" / "data" / "scifact").resolve()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A session-wide cache dir (the demo data set is built once into it)."""
    return tmp_path_factory.mktemp("simlm-cache")


@pytest.fixture(scope="session")
def demo_root(cache_dir) -> Path:
    from simlm.data.demo import ensure_demo_dataset

    return ensure_demo_dataset(cache_dir)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Folder of a randomly initialised 2-layer BERT (hidden 32) with a WordPiece tokenizer."""
    from tests.tiny_models import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def compose(tmp_path, cache_dir):
    """Compose `conf/run.yaml` with overrides; outputs go to a fresh tmp folder."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from simlm.config import register_resolvers

    register_resolvers()

    def _compose(*overrides: str, output_dir: Path | None = None):
        out = output_dir or tmp_path / "run"
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(
                config_name="run",
                overrides=[f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}", *overrides],
            )

    return _compose


def requires_scifact():
    return pytest.mark.skipif(
        not (SCIFACT / "corpus.jsonl").exists(), reason=f"SciFact not found at {SCIFACT}"
    )
