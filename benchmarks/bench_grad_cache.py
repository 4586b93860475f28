"""Peak memory of a bi-encoder training step vs batch size, with and without GradCache, on the CPU.

SimLM's per-device batch is 16 queries x 16 passages x 144 tokens. This benchmark trains MiniLM with
SimLM's input convention (model=minilm_simlm_input: [CLS] pooling, (title, text) pairs, 32 query /
144 passage tokens) on batches of 2, 4, 8 and 16 queries x 16 passages (SciFact train queries, each
with its judged positive and 15 random passages; the demo data when SciFact is absent) at simlm's CPU
defaults (`trainer.precision=auto`, `model.attention_dropout=0`). One process per row: a warm-up step,
then one timed forward + backward + AdamW step. Rows: GradCache off (`stage.module.grad_cache=null`)
and on (`BiEncoderModule(grad_cache={"query_chunk": 4, "passage_chunk": 16})`). Peak RSS is each
process's `ru_maxrss`, model loading included.

Settings (environment): SIMLM_BENCH_SIZES ("2,4,8,16"), SIMLM_BENCH_PASSAGES (16), SIMLM_BENCH_STEPS (1),
SIMLM_BENCH_WARMUP (1), SIMLM_BENCH_QUERY_CHUNK (4), SIMLM_BENCH_PASSAGE_CHUNK (16).
`python -m benchmarks grad_cache`.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import child_result, report, run_child, training_groups, training_root
from benchmarks.cpu import cpu_path

SIZES = [int(s) for s in os.environ.get("SIMLM_BENCH_SIZES", "2,4,8,16").split(",") if s.strip()]
PASSAGES = int(os.environ.get("SIMLM_BENCH_PASSAGES", "16"))
STEPS = int(os.environ.get("SIMLM_BENCH_STEPS", "1"))
WARMUP = int(os.environ.get("SIMLM_BENCH_WARMUP", "1"))
QUERY_CHUNK = int(os.environ.get("SIMLM_BENCH_QUERY_CHUNK", "4"))
PASSAGE_CHUNK = int(os.environ.get("SIMLM_BENCH_PASSAGE_CHUNK", "16"))
SETTINGS = {"pooling": "cls", "q_max_len": 32, "p_max_len": 144, "passage_format": "pair"}
GOAL_GB = 4.0
MODULE = "benchmarks.bench_grad_cache"


def grad_cache_supported() -> bool:
    """Whether this checkout's `BiEncoderModule` takes a `grad_cache` argument."""
    from simlm.modules.biencoder import BiEncoderModule

    return "grad_cache" in inspect.signature(BiEncoderModule.__init__).parameters


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up + timed steps of one (batch size, GradCache setting) in this process."""
    import torch
    import transformers

    from simlm.data.datamodules import GroupCollator
    from simlm.data.tokenization import load_tokenizer
    from simlm.modules.biencoder import BiEncoderModule
    from simlm.runtime import autocast

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    queries = spec["queries"]
    groups = training_groups(Path(spec["root"]), queries * (spec["warmup"] + spec["steps"]), spec["passages"])
    extra = {"grad_cache": spec["grad_cache"]} if spec["grad_cache"] else {}
    module = BiEncoderModule(
        spec["model_path"],
        SETTINGS,
        lr=2e-5,
        warmup_steps=0,
        train_n_passages=spec["passages"],
        attention_dropout=0.0,
        **extra,
    )
    module.train()
    collate = GroupCollator(load_tokenizer(spec["model_path"]), module.encoder.settings)
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-5, weight_decay=0.0)
    times, cpu_times, losses = [], [], []
    load = os.getloadavg()[0]
    for i in range(spec["warmup"] + spec["steps"]):
        batch = collate(groups[i * queries : (i + 1) * queries])
        start, cpu_start = time.perf_counter(), time.process_time()
        with autocast(spec["precision"], "cpu"):
            loss, _ = module.compute_loss(batch, training=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        losses.append(float(loss.detach()))
    load_range = f"{load:.1f}-{os.getloadavg()[0]:.1f}"
    return {"times": times, "cpu_times": cpu_times, "losses": losses, "load": load_range}


def main() -> dict[str, Any]:
    from simlm.config import minilm_path

    precision, path_label = cpu_path("auto")
    data_name, root = training_root()
    supported = grad_cache_supported()
    chunks = {"query_chunk": QUERY_CHUNK, "passage_chunk": PASSAGE_CHUNK}
    settings: list[dict[str, int] | None] = [None, chunks] if supported else [None]
    if not supported:
        print(
            "GradCache is not available on this checkout (BiEncoderModule takes no grad_cache argument): "
            "measuring the rows without it only",
            file=sys.stderr,
        )
    base = {
        "model_path": minilm_path(),
        "root": str(root),
        "passages": PASSAGES,
        "precision": precision,
        "steps": STEPS,
        "warmup": WARMUP,
    }
    rows = []
    plain_times: dict[int, tuple[float, float]] = {}
    for queries in SIZES:
        for grad_cache in settings:
            result = run_child(MODULE, {**base, "queries": queries, "grad_cache": grad_cache})
            seconds = statistics.median(result["times"])
            cpu_seconds = statistics.median(result["cpu_times"])
            if grad_cache is None:
                plain_times[queries] = (seconds, cpu_seconds)
            rows.append(
                {
                    "batch": f"{queries} x {PASSAGES} x 144",
                    "grad_cache": f"{QUERY_CHUNK} q / {PASSAGE_CHUNK} p" if grad_cache else "off",
                    "peak_rss_gb": round(result["peak_rss_mb"] / 1024, 2),
                    "s_per_step": round(seconds, 2),
                    "time_vs_off": round(seconds / plain_times[queries][0], 2) if grad_cache else 1.0,
                    "cpu_s_per_step": round(cpu_seconds, 1),
                    "cpu_time_vs_off": round(cpu_seconds / plain_times[queries][1], 2) if grad_cache else 1.0,
                    "load": result["load"],
                    "loss": round(result["losses"][-1], 4),
                }
            )
    cached = [r["peak_rss_gb"] for r in rows if r["grad_cache"] != "off"]
    verdict = (
        f"GradCache peak RSS {min(cached):.2f}-{max(cached):.2f} GB over the sizes "
        f"(goal <= {GOAL_GB:g} GB at every size: {'met' if max(cached) <= GOAL_GB else 'NOT met'})"
        if cached
        else "GradCache not measured: this checkout's BiEncoderModule takes no grad_cache argument"
    )
    notes = (
        f"CPU path: {path_label} (trainer.precision=auto), model.attention_dropout=0. MiniLM with SimLM's "
        f"input ([CLS], title/text pairs, 32 / 144 tokens), {data_name} train queries x {PASSAGES} passages "
        f"(judged positive + random), AdamW, clip 1.0; one process per row, peak RSS = its ru_maxrss (model "
        f"load included), median of {STEPS} timed step(s) after {WARMUP} warm-up (wall time; cpu_s_per_step: the "
        f"process's CPU time, all threads; load: the 1-minute load average at the row's start and end); "
        f"loss: of the last step (same batches with and without GradCache; the hidden dropout, 0.1, draws "
        f"other masks when the rows are encoded in chunks). {verdict}. Load average "
        f"at the end {os.getloadavg()[0]:.2f}."
    )
    return report(
        "grad_cache",
        rows,
        notes,
        extra={"cpu_path": path_label, "precision": precision, "grad_cache_supported": supported},
    )


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_result(_child(json.loads(sys.argv[sys.argv.index("--child") + 1])))
    else:
        main()
