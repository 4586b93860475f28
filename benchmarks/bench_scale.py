"""Retrieval at scale, by simulation: faiss indexes vs exact search, and the memory of exact search.

`python -m benchmarks scale [--n 1000000] [--dim 384] [--queries 200] [--factories ...] [--skip-rss]`

A corpus of `n` random unit vectors (float16 shards of 50k rows, as `stage=encode` writes them) in
which every query has 200 planted neighbours at cosine 0.4-0.9 (+- 1/sqrt(dim)) from its centre,
scattered over the shards; everything else is background (cosine about 0 +- 1/sqrt(dim)). Exact search
(`simlm.retrieval.index.ExactSearch`, memory-mapped) is the reference: each index is built with
`simlm.retrieval.ann.build_index` (`stage=index`), searched with `FaissIndex` (`stage=search
stage.index_dir`), and its recall@k is the share of the exact top k it returns. Timings are ratios to
exact search in the same run. Then the peak RSS of exact search over 1/4, 1/2 and all of the corpus,
each in a fresh process: memory-mapped (`stage=search stage.embeddings_dir`) vs the whole corpus
loaded into one float32 matrix first. Last, a 10M-vector table extrapolated from the measured sizes and timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PROJECT_ROOT, report

# twice as many planted neighbours as the top k: the k-th and (k+1)-th are as close as in real data,
# not separated from each other by the gap to the background
PLANTED = 200  # neighbours planted per query
SIMILARITY = (0.4, 0.9)  # cosine of a planted neighbour to its query's centre
QUERY_NOISE = 0.3  # the query is its centre plus this much noise (cosine ~0.96 to the centre)
TOP_K = 100
SHARD = 50_000
EXTRAPOLATE_TO = 10_000_000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class PlantedCorpus:
    """`n` x `dim` random unit vectors; query i has `PLANTED` neighbours at chosen rows (seeded)."""

    def __init__(self, n: int, dim: int, n_queries: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.dim, self.seed = n, dim, seed
        self.centres = _unit(rng.standard_normal((n_queries, dim), dtype=np.float32))
        self.queries = _unit(
            self.centres
            + QUERY_NOISE / math.sqrt(dim) * rng.standard_normal(self.centres.shape, dtype=np.float32)
        )
        planted = PLANTED * n_queries
        if planted > n:
            raise ValueError(f"{n_queries} queries x {PLANTED} planted neighbours need n >= {planted}")
        self.rows = rng.choice(n, planted, replace=False)  # planted row j belongs to query j // PLANTED
        self.cosines = rng.uniform(*SIMILARITY, size=planted).astype(np.float32)

    def shard(self, start: int, end: int) -> np.ndarray:
        """Rows `start`-`end`: background, with the planted neighbours that fall there."""
        rng = np.random.default_rng((self.seed, start))
        out = _unit(rng.standard_normal((end - start, self.dim), dtype=np.float32))
        inside = np.flatnonzero((self.rows >= start) & (self.rows < end))
        if len(inside):
            centre = self.centres[inside // PLANTED]
            cos = self.cosines[inside][:, None]
            # a random unit vector, nearly orthogonal to the centre: cosine cos +- 1/sqrt(dim)
            noise = out[self.rows[inside] - start]
            out[self.rows[inside] - start] = _unit(cos * centre + np.sqrt(1 - cos**2) * noise)
        return out


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist())) for f, e in zip(found, exact)]
    return float(np.mean(hits) / k)


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def default_factories(n: int, dim: int) -> list[tuple[str, dict[str, int]]]:
    """Flat, HNSW32 and IVF-PQ sized for `n`: sqrt(n) lists (a power of 2), dim/4 bytes of PQ code."""
    ivfpq = f"IVF{_lists(n)},PQ{dim // 4}"
    return [("Flat", {}), ("HNSW32", {"efSearch": 128}), (ivfpq, {"nprobe": 16}), (ivfpq, {"nprobe": 64})]


def _parse_factories(text: str) -> list[tuple[str, dict[str, int]]]:
    """`Flat;HNSW32@efSearch=128;IVF1024,PQ48@nprobe=32` -> factories and their search parameters."""
    out = []
    for item in text.split(";"):
        factory, _, params = item.partition("@")
        values = dict(p.split("=") for p in params.split("+") if p)
        out.append((factory, {k: int(v) for k, v in values.items()}))
    return out


def rss_child(spec: dict[str, Any]) -> None:
    """One peak-RSS measurement (run in a fresh process): exact search of the first `shards` shards."""
    import resource

    from simlm.retrieval.index import ExactSearch, search
    from simlm.retrieval.store import load_shards, plan_blocks, read_manifest

    emb_dir = Path(spec["emb_dir"])
    queries = np.load(spec["queries"])
    reset = _reset_peak_rss()  # the imports' own peak (torch, transformers) is not the search's
    start = time.perf_counter()
    if spec["mode"] == "mmap":
        blocks = tuple(b for b in plan_blocks(read_manifest(emb_dir)) if b.shard < spec["shards"])
        ExactSearch(emb_dir, mmap=True, blocks=blocks).search(queries, TOP_K)
    else:  # the corpus in memory first, one float32 matrix filled shard by shard (SimLM's torch.mm input)
        manifest = read_manifest(emb_dir)
        n = sum(s["end"] - s["start"] for s in manifest["shards"][: spec["shards"]])
        emb = np.empty((n, manifest["dim"]), dtype=np.float32)
        filled = 0
        for _, (rows, shard) in zip(range(spec["shards"]), load_shards(emb_dir, mmap=False)):
            emb[filled : filled + len(rows)] = shard
            filled += len(rows)
        search(queries, [(np.arange(n, dtype=np.int64), emb)], TOP_K)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "start_rss_mb": reset or 0.0, "seconds": seconds}))


def _reset_peak_rss() -> float | None:
    """Reset this process's peak RSS to its current RSS (Linux `clear_refs`); the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _measure_rss(emb_dir: Path, queries_file: Path, mode: str, shards: int) -> dict[str, float]:
    spec = {"emb_dir": str(emb_dir), "queries": str(queries_file), "mode": mode, "shards": shards}
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--rss-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def _lists(n: int) -> int:
    """IVF lists for `n` vectors: sqrt(n), rounded to a power of 2."""
    return 2 ** round(math.log2(math.sqrt(n)))


def _extrapolate(rows: list[dict[str, Any]], n: int, dim: int, exact_qps: float) -> list[dict[str, Any]]:
    """10M-vector figures from the measured ones (the rules are in the table's notes)."""
    from simlm.retrieval.ann import MIN_TRAIN_SIZE, TRAIN_POINTS_PER_LIST

    scale = EXTRAPOLATE_TO / n
    log_ratio = math.log(EXTRAPOLATE_TO) / math.log(n)
    lists_ratio = _lists(EXTRAPOLATE_TO) / _lists(n)

    def train_points(m: int) -> int:
        return min(m, max(MIN_TRAIN_SIZE, TRAIN_POINTS_PER_LIST * _lists(m)))

    out = [
        {
            "method": "exact (mmap shards)",
            "index_gb": round(EXTRAPOLATE_TO * dim * 2 / 2**30, 2),
            "build_s": 0,
            "queries_per_s": round(exact_qps / scale, 1),
            "ram_gb": round(SHARD * dim * 6 / 2**30, 2),
        }
    ]
    for r in rows:
        factory = r["method"]
        if factory.startswith("HNSW"):
            build, qps = r["build_s"] * scale * log_ratio, r["queries_per_s"] / log_ratio
        elif factory.startswith("IVF"):
            # k-means: sample x lists; adding: assignment to lists_ratio x more lists; a query at the same
            # nprobe scans scale / lists_ratio x more codes
            sample_ratio = train_points(EXTRAPOLATE_TO) / train_points(n)
            build = r["train_s"] * sample_ratio * lists_ratio + r["add_s"] * scale * lists_ratio
            qps = r["queries_per_s"] / (scale / lists_ratio)
        else:
            build, qps = r["build_s"] * scale, r["queries_per_s"] / scale
        size_gb = r["index_mb"] * scale / 1024
        name = f"{factory} {r['params']}".strip()
        if factory.startswith("IVF"):
            name = name.replace(f"IVF{_lists(n)},", f"IVF{_lists(EXTRAPOLATE_TO)},")
        out.append(
            {
                "method": name,
                "index_gb": round(size_gb, 2),
                "build_s": round(build),
                "queries_per_s": round(qps, 1),
                "ram_gb": round(size_gb, 2),  # every list or vector is touched over many queries
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="corpus vectors (default 1M)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factories", help="e.g. 'Flat;HNSW32@efSearch=128;IVF1024,PQ48@nprobe=32'")
    parser.add_argument("--workdir", help="where the shards and indexes go (default: a temp folder, removed)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(json.loads(args.rss_child))
        return

    from simlm.retrieval.ann import FaissIndex, build_index
    from simlm.retrieval.index import ExactSearch
    from simlm.retrieval.store import write_embeddings

    # results/scale*.json hold the default size; other sizes get their own files
    tag = "" if args.n == 1_000_000 else f"_{args.n // 1000}k"
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="simlm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = PlantedCorpus(args.n, args.dim, args.queries)
        emb_dir = work / "embeddings"
        gen_s, _ = _timed(
            lambda: write_embeddings(emb_dir, corpus.shard, args.n, shard_size=SHARD, dtype="float16")
        )
        queries = corpus.queries
        exact_s, (exact_scores, exact_rows) = _timed(lambda: ExactSearch(emb_dir).search(queries, TOP_K))
        exact_qps = len(queries) / exact_s
        planted_found = (
            np.mean(
                [
                    len(
                        set(exact_rows[i].tolist())
                        & set(corpus.rows[i * PLANTED : (i + 1) * PLANTED].tolist())
                    )
                    for i in range(len(queries))
                ]
            )
            / TOP_K
        )
        rows = [
            {
                "method": "exact (mmap shards)",
                "params": "",
                "build_s": 0.0,
                "index_mb": round(args.n * args.dim * 2 / 2**20, 1),
                "bytes_per_vector": args.dim * 2,
                "queries_per_s": round(exact_qps, 1),
                "speedup": 1.0,
                "recall@10": 1.0,
                "recall@100": 1.0,
            }
        ]
        built: dict[str, dict[str, Any]] = {}
        factories = (
            _parse_factories(args.factories) if args.factories else default_factories(args.n, args.dim)
        )
        for factory, params in factories:
            index_dir = work / f"index-{factory.replace(',', '_')}"
            if factory not in built:
                seconds, manifest = _timed(lambda f=factory, d=index_dir: build_index(emb_dir, d, f, seed=0))
                built[factory] = {"build_s": seconds, "manifest": manifest}
            manifest = built[factory]["manifest"]
            index = FaissIndex(index_dir)
            index.set_params(params)
            search_s, (_, found) = _timed(lambda i=index: i.search(queries, TOP_K))
            qps = len(queries) / search_s
            rows.append(
                {
                    "method": factory,
                    "params": " ".join(f"{k}={v}" for k, v in params.items()),
                    "build_s": round(built[factory]["build_s"], 1),
                    "train_s": manifest["train_seconds"],
                    "add_s": manifest["add_seconds"],
                    "index_mb": round(manifest["index_bytes"] / 2**20, 1),
                    "bytes_per_vector": round(manifest["index_bytes"] / args.n, 1),
                    "queries_per_s": round(qps, 1),
                    "speedup": round(qps / exact_qps, 1),
                    "recall@10": round(_recall(found, exact_rows, 10), 4),
                    "recall@100": round(_recall(found, exact_rows, TOP_K), 4),
                }
            )
            del index
        ivfpq = [r for r in rows if "PQ" in r["method"]]
        goal = [r for r in ivfpq if r["recall@100"] >= 0.95 and r["speedup"] >= 10]
        notes = (
            f"{args.n:,} x {args.dim} float16 vectors in {SHARD:,}-row shards (written in {gen_s:.0f} s), "
            f"{len(queries):,} queries with {PLANTED} planted neighbours each at cosine {SIMILARITY[0]}-{SIMILARITY[1]} "
            f"({planted_found:.3f} of the exact top {TOP_K} are planted); recall@k = share of the exact top k found; "
            f"exact search {exact_qps:.1f} queries/s. Goal (IVF-PQ recall@100 >= 0.95 at >= 10x exact): "
            + (
                f"met by {', '.join(r['method'] + ' ' + r['params'] for r in goal)}"
                if goal
                else ("NOT met" if ivfpq else "no IVF-PQ index in this run")
            )
            + f". Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."
        )
        report(
            f"scale{tag}",
            [{k: v for k, v in r.items() if k not in ("train_s", "add_s")} for r in rows],
            notes,
        )

        if not args.skip_rss:
            queries_file = work / "queries.npy"
            np.save(queries_file, queries[:100])
            shards = -(-args.n // SHARD)
            rss_rows = []
            for part in sorted({max(1, shards // 4), max(1, shards // 2), shards}):
                row: dict[str, Any] = {"passages": min(args.n, part * SHARD)}
                row["fp32_corpus_mb"] = round(row["passages"] * args.dim * 4 / 2**20)
                for mode in ("in_memory", "mmap"):
                    got = _measure_rss(emb_dir, queries_file, mode, part)
                    row[f"{mode}_peak_rss_mb"] = round(got["peak_rss_mb"])
                    row[f"{mode}_s"] = round(got["seconds"], 1)
                row["rss_before_search_mb"] = round(got["start_rss_mb"])
                rss_rows.append(row)
            mmap_peaks = [r["mmap_peak_rss_mb"] for r in rss_rows]
            report(
                f"scale_memory{tag}",
                rss_rows,
                f"peak RSS of exact search of 100 queries, each in a fresh process; mmap: "
                f"{min(mmap_peaks)}-{max(mmap_peaks)} MiB over a {rss_rows[-1]['passages'] // rss_rows[0]['passages']}x "
                f"larger corpus (one {SHARD:,}-row shard mapped at a time)",
            )

        report(
            f"scale_10m{tag}",
            _extrapolate(rows[1:], args.n, args.dim, exact_qps),
            f"extrapolated from the {args.n:,}-vector run to {EXTRAPOLATE_TO:,} x {args.dim}: sizes and "
            "Flat/exact times linear in n; HNSW build n log n, search 1/log n; IVF lists grow as sqrt(n) "
            "(training: sample x lists, an upper bound as PQ training does not grow; adding: n x lists; "
            "search at the same nprobe: lists / n); ram_gb: what search keeps resident (an index: all of "
            "it, every part is touched over many queries; exact: one shard in float16 + float32)",
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
