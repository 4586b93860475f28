"""Shared helpers: timing, peak memory, and the result table/JSON every benchmark writes."""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simlm.config import find_scifact, scifact_candidates

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# one lookup (simlm.config, also behind `data=scifact`): $SIMLM_SCIFACT, else ../shared, /work/shared
SCIFACT = find_scifact() or scifact_candidates()[0].resolve()


def demo_root() -> Path:
    """The demo data set's folder (built on first use into `$SIMLM_CACHE`, default ~/.cache/simlm)."""
    from simlm.data.demo import ensure_demo_dataset

    return ensure_demo_dataset(Path(os.environ.get("SIMLM_CACHE", Path.home() / ".cache" / "simlm")))


def training_root() -> tuple[str, Path]:
    """`(name, folder)` of the real text the training benchmarks use: SciFact when present, else the demo."""
    if (SCIFACT / "corpus.jsonl").is_file():
        return "scifact", SCIFACT
    return "demo", demo_root()


def passage_string(title: str, text: str) -> str:
    """A passage as one segment, `title text`: sentence-transformers' input and `passage_format=concat`'s."""
    return f"{title} {text}" if title else text


def training_groups(
    root: Path, n_groups: int, group_size: int, split: str = "train", seed: int = 0
) -> list[dict[str, Any]]:
    """`n_groups` training groups of a BEIR folder: a query, its first judged positive, random negatives.

    Each group is `{query, titles, texts, scores}` (the item `simlm.data.datamodules.GroupCollator` takes),
    `group_size` passages with the positive first; negatives are corpus passages drawn at random (seeded),
    never one judged for the query. Queries are shuffled (seeded) and reused when `n_groups` exceeds them.
    """
    from simlm.data.dataset import RetrievalData

    data = RetrievalData(root, "beir")
    queries, qrels, corpus = data.queries(split), data.qrels(split), data.corpus
    rng = random.Random(seed)
    qids = sorted(q for q, judged in qrels.items() if any(g >= 1 for g in judged.values()))
    rng.shuffle(qids)
    groups = []
    for i in range(n_groups):
        qid = qids[i % len(qids)]
        judged = qrels[qid]
        rows = [corpus.row(sorted(d for d, g in judged.items() if g >= 1)[0])]
        while len(rows) < group_size:
            row = rng.randrange(len(corpus))
            if corpus.doc_id(row) not in judged and row not in rows:
                rows.append(row)
        passages = corpus.passages(rows)
        groups.append(
            {
                "query": queries[qid],
                "titles": [p.title for p in passages],
                "texts": [p.text for p in passages],
                "scores": [0.0] * group_size,
            }
        )
    return groups


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RESULT_PREFIX = "BENCH_RESULT "


def run_child(module: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run `python -m <module> --child <spec as JSON>` in a fresh process and return the dict it reports.

    One process per measurement makes `ru_maxrss` (peak RSS) that measurement's own. The child prints
    its result with `child_result`; its other output is passed through. A failed child raises.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(spec)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        else:
            print(line)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{module} {spec}: the child process failed (exit code {proc.returncode})")
    return result


def child_result(result: dict[str, Any]) -> None:
    """Report `result` (plus this process's peak RSS) to the parent `run_child`."""
    print(RESULT_PREFIX + json.dumps({**result, "peak_rss_mb": round(peak_rss_mb())}), flush=True)


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Fastest wall time of `repeats` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def report(
    name: str, rows: list[dict[str, Any]], notes: str = "", extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Print `rows` as a table and write `benchmarks/results/<name>.json` (atomically).

    `extra`: more top-level fields of the JSON (e.g. the CPU path a benchmark took)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    if notes:
        print(notes)
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": rows,
        "notes": notes,
        **(extra or {}),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_DIR / f"{name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, RESULTS_DIR / f"{name}.json")
    return payload


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)
