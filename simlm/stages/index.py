"""`stage=index`: a faiss index of a `stage=encode` embeddings folder, built once for many searches.

`stage.factory` is any faiss index-factory string (`Flat`, `HNSW32`, `IVF4096,PQ64`,
`OPQ64,IVF65536_HNSW32,PQ64`, ...; inner-product metric). Training uses `stage.train_size` rows drawn
with `stage.seed`; vectors are added shard by shard from the memory-mapped shards. The folder
(`index.faiss`, `rows.npy`, `manifest.json` written last) is searched with
`stage=search stage.index_dir=<folder>`. See `simlm.retrieval.ann`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from simlm.retrieval.ann import build_index
from simlm.stages import Metrics, format_metrics
from simlm.stages.params import NON_EMPTY_TEXT, PATH, POSITIVE_INT, integer, optional

log = logging.getLogger(__name__)

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "embeddings_dir": optional(PATH),
    "factory": NON_EMPTY_TEXT,
    "out_dir": PATH,
    "train_size": optional(POSITIVE_INT),
    "add_batch_size": POSITIVE_INT,
    "seed": integer(min=0),
}


def run(cfg: DictConfig) -> Metrics:
    """Build `stage.factory` over `stage.embeddings_dir` into `stage.out_dir`; metrics: sizes and times."""
    stage = cfg.stage
    if not stage.get("embeddings_dir"):
        raise ValueError("stage=index needs stage.embeddings_dir=<a stage=encode output folder>")
    out_dir = Path(str(stage.out_dir))
    manifest = build_index(
        stage.embeddings_dir,
        out_dir,
        str(stage.factory),
        train_size=stage.get("train_size"),
        seed=int(stage.seed),
        add_batch_size=int(stage.add_batch_size),
    )
    count = manifest["count"]
    metrics: Metrics = {
        "index": {
            "vectors": count,
            "dim": manifest["dim"],
            "trained_on": manifest["trained_on"],
            "train_seconds": manifest["train_seconds"],
            "add_seconds": manifest["add_seconds"],
            "index_mb": round(manifest["index_bytes"] / 2**20, 2),
            "bytes_per_vector": round(manifest["index_bytes"] / max(count, 1), 1),
        }
    }
    log.info("index in %s; search it with stage=search stage.index_dir=%s", out_dir, out_dir)
    print(format_metrics(metrics, title=f"{stage.factory} index of {stage.embeddings_dir} -> {out_dir}"))
    return metrics
