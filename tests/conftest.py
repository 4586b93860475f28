"""Shared fixtures: composed Hydra configs, tiny models, small data sets. Nothing touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trainer.precision=auto picks bf16 on CPUs with native bf16: pin fp32 so the numerical tests compare like
# with like on every machine; tests/test_precision.py runs both paths explicitly
os.environ.setdefault("SIMLM_CPU_BF16", "0")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
from benchmarks.common import SCIFACT  # noqa: E402  (simlm.config.find_scifact: the lookup data=scifact uses)


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


@pytest.fixture(scope="session")
def small_beir(demo_root, tmp_path_factory) -> Path:
    """A ~600-passage BEIR-layout slice of the demo data: 150 train / 40 dev / 40 test queries."""
    import json

    from simlm.data.dataset import RetrievalData
    from simlm.data.formats import write_beir_corpus, write_beir_qrels

    demo = RetrievalData(demo_root, layout="beir")
    root = tmp_path_factory.mktemp("small-beir")
    keep_docs: set[str] = set()
    queries: dict[str, str] = {}
    for split, n in (("train", 150), ("dev", 40), ("test", 40)):
        qrels = dict(list(demo.qrels(split).items())[:n])
        write_beir_qrels(root / "qrels" / f"{split}.tsv", qrels)
        keep_docs |= {d for docs in qrels.values() for d in docs}
        queries |= {q: demo.queries(split)[q] for q in qrels}
    corpus = demo.corpus
    distractors = [corpus.doc_id(r) for r in range(0, len(corpus), 12)]
    keep_docs |= set(distractors)
    rows = sorted(corpus.row(d) for d in keep_docs)
    write_beir_corpus(root / "corpus.jsonl", ((p.doc_id, p.title, p.text) for p in corpus.passages(rows)))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    )
    return root


@pytest.fixture(scope="session")
def small_beir_bm25(small_beir, tmp_path_factory, cache_dir) -> Path:
    """Output folder of `stage=bm25` on `small_beir`: runs, metrics and BM25-negative `train.jsonl`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from simlm.config import register_resolvers
    from simlm.stages import run_stage

    register_resolvers()
    out = tmp_path_factory.mktemp("small-beir-bm25")
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            config_name="run",
            overrides=[
                "stage=bm25",
                "data=beir",
                f"data.root={small_beir}",
                f"paths.output_dir={out}",
                f"paths.cache_dir={cache_dir}",
                "stage.negatives.mining.num_negatives=40",
            ],
        )
    run_stage(cfg)
    return out
