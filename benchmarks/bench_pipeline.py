"""A whole pipeline's wall time in units of a reference step timed on the same machine, in the same run.

VMs of this kind are not always the same speed (the same kernel has taken 3.3 s on one 2-core EPYC and
6-7 s on another), so a wall time alone does not say whether a change made the job faster. The
reference step is the kernel of the issue that set the speed goals (`../shared/tools/cpu_levers.py`):
MiniLM forward + backward of 64 SciFact passages (the demo's without SciFact) at 256 tokens, attention
dropout 0, on simlm's CPU path (bf16 autocast where the CPU has native bf16, else fp32). It is timed
before and after the job (one process each, a warm-up step then `PROBE_STEPS`); the job runs as
`run.py <overrides> stage.work_dir=<fresh folder>` and the table gives its wall time, its peak RSS,
each step's seconds, and the wall time divided by the median reference step.

    .venv/bin/python -m benchmarks pipeline                                   # the main job (demo)
    .venv/bin/python -m benchmarks pipeline -- +experiment=scifact_pipeline  # the SciFact recipe

Results go to `benchmarks/results/pipeline.json` (`pipeline_<experiment>.json` with `+experiment=`).
`stage.work_dir=<new folder>` keeps the job's folder (`split_work_dir`); otherwise a temporary one is
removed afterwards.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PROJECT_ROOT, child_result, passage_string, report, run_child, training_root
from benchmarks.cpu import cpu_path

PROBE_PASSAGES, PROBE_TOKENS, PROBE_STEPS = 64, 256, 5


def probe_texts(root: Path, n: int = PROBE_PASSAGES, seed: int = 0) -> list[str]:
    """`n` passages of the BEIR folder `root` drawn with replacement (seeded), as `title text`."""
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    rng = random.Random(seed)
    return [passage_string(p.get("title", ""), p["text"]) for p in (rng.choice(corpus) for _ in range(n))]


def _probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds of each reference step (after one warm-up step) in this process."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from simlm.config import minilm_path

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False, attention_probs_dropout_prob=0.0)
    model.train()
    batch = tokenizer(
        probe_texts(Path(spec["root"])),
        max_length=PROBE_TOKENS,
        truncation=True,
        padding=True,
        return_tensors="pt",
    )
    bf16 = spec["precision"] == "bf16-mixed"
    times = []
    for _ in range(spec["steps"] + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = model(**batch).last_hidden_state
        hidden.float().mean().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"step_seconds": times[1:], "tokens": int(batch["attention_mask"].sum())}


def run_job(overrides: list[str], work_dir: Path) -> dict[str, Any]:
    """Run `run.py <overrides>` with its pipeline in `work_dir`: wall seconds, peak RSS, step seconds."""
    command = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        *overrides,
        f"stage.work_dir={work_dir}",
        f"hydra.run.dir={work_dir / 'hydra'}",
    ]
    print("job:", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the job failed (exit code {os.waitstatus_to_exitcode(status)}): {command}")
    results = json.loads((work_dir / "results.json").read_text())
    return {
        "seconds": seconds,
        # Linux reports ru_maxrss in KiB: the largest of the job and the processes it waited for
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "steps": {row["step"]: row.get("seconds") for row in results["rows"]},
    }


def pipeline_rows(job: dict[str, Any], before: list[float], after: list[float]) -> list[dict[str, Any]]:
    """The table: one row per pipeline step and the whole job, each in seconds and reference steps."""
    reference = statistics.median(before + after)
    rows = [
        {"what": f"step {step}", "seconds": s, "reference_steps": None if s is None else s / reference}
        for step, s in job["steps"].items()
    ]
    rows.append(
        {
            "what": "whole job",
            "seconds": job["seconds"],
            "reference_steps": job["seconds"] / reference,
            "peak_rss_gb": job["peak_rss_mb"] / 1024,
        }
    )
    return rows


def split_work_dir(overrides: list[str]) -> tuple[list[str], Path | None]:
    """The job's overrides without `stage.work_dir=`, and that folder (None: a temporary one).

    A kept folder must not exist or be empty: a pipeline resumed from complete steps would skip them."""
    kept = [o.split("=", 1)[1] for o in overrides if o.startswith("stage.work_dir=")]
    job = [o for o in overrides if not o.startswith("stage.work_dir=")]
    work_dir = Path(kept[-1]) if kept else None
    if work_dir is not None and work_dir.exists() and any(work_dir.iterdir()):
        raise SystemExit(
            f"stage.work_dir={work_dir} is not empty: the pipeline would skip its complete steps"
        )
    return job, work_dir


def main(argv: list[str] | None = None) -> None:
    if argv and argv[0] == "--child":
        child_result(_probe(json.loads(argv[1])))
        return
    overrides, work_dir = split_work_dir([a for a in (argv or []) if a != "--"])
    precision, label = cpu_path("auto")
    data_name, root = training_root()
    spec = {"root": str(root), "precision": precision, "steps": PROBE_STEPS}
    before = run_child("benchmarks.bench_pipeline", spec)
    if work_dir is not None:  # kept, e.g. to train variants from its steps
        job = run_job(overrides, work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="simlm-bench-pipeline-") as tmp:
            job = run_job(overrides, Path(tmp) / "work")
    after = run_child("benchmarks.bench_pipeline", spec)
    reference = statistics.median(before["step_seconds"] + after["step_seconds"])
    experiments = [o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")]
    notes = (
        f"job: run.py {' '.join(overrides) or '(the main job)'}; CPU path: {label}. Reference step: MiniLM "
        f"forward + backward of {PROBE_PASSAGES} {data_name} passages x {PROBE_TOKENS} tokens "
        f"({before['tokens']} real tokens), attention dropout 0, {precision}: before the job "
        f"{_seconds(before['step_seconds'])}, after it {_seconds(after['step_seconds'])}; median "
        f"{reference:.2f} s. Wall time / median = the job in reference steps."
    )
    report(
        "_".join(["pipeline", *experiments]),
        pipeline_rows(job, before["step_seconds"], after["step_seconds"]),
        notes,
        extra={
            "cpu_path": label,
            "reference_step_seconds": {"before": before["step_seconds"], "after": after["step_seconds"]},
            "overrides": overrides,
        },
    )


def _seconds(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "] s"


if __name__ == "__main__":
    main(sys.argv[1:])
