"""Re-ranking throughput: `stage=rerank`'s scoring vs a plain transformers loop vs sentence-transformers.

Same model for all three: all-MiniLM-L6-v2 (`simlm.config.minilm_path()`) loaded once as a one-logit
sequence classifier with a seeded new head and saved to a temporary folder that every method loads;
same 512 (query, passage) pairs, batch 64, max length 192, fp32 on the CPU, raw logits everywhere.
Pairs: 64 demo dev queries x 8 demo passages (the judged one + 7 others), passages as SimLM formats
them ("title: text"). Ours is `simlm.retrieval.rerank.score_pairs` (what stage=rerank and
stage=teacher_scores call on every rank): tokenise once, length-sorted padded batches, inference mode.
Methods run interleaved, best of `REPEATS`, to even out the load of a shared machine.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import peak_rss_mb, report

N_QUERIES, PER_QUERY = 64, 8
BATCH = 64
MAX_LEN = 192
REPEATS = 2


def build_pairs() -> tuple[list[tuple[str, str]], object]:
    """`(query text, doc id)` pairs over the demo data set, and its corpus."""
    from simlm.data.dataset import RetrievalData
    from simlm.data.demo import ensure_demo_dataset

    cache = Path(os.environ.get("SIMLM_CACHE", Path.home() / ".cache" / "simlm"))
    data = RetrievalData(ensure_demo_dataset(cache), layout="beir")
    corpus, queries, qrels = data.corpus, data.queries("dev"), data.qrels("dev")
    rng = np.random.default_rng(0)
    pairs = []
    for qid in list(queries)[:N_QUERIES]:
        judged = next(iter(qrels[qid]))
        others = [corpus.doc_id(int(r)) for r in rng.choice(len(corpus), PER_QUERY - 1, replace=False)]
        pairs += [(queries[qid], d) for d in [judged, *others]]
    return pairs, corpus


def save_classifier(src: str, out: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)


def run_ours(model_dir: str, pairs, corpus) -> tuple[float, np.ndarray]:
    from simlm.models.cross_encoder import load_reranker
    from simlm.retrieval.rerank import score_pairs

    model, tokenizer = load_reranker(model_dir)
    start = time.perf_counter()
    scores = score_pairs(model, tokenizer, corpus, pairs, max_length=MAX_LEN, batch_size=BATCH)
    return time.perf_counter() - start, scores


def texts_of(pairs, corpus) -> tuple[list[str], list[str]]:
    from simlm.models.cross_encoder import passage_text

    docs = corpus.passages([corpus.row(d) for _, d in pairs])
    return [q for q, _ in pairs], [passage_text(p.title, p.text) for p in docs]


def run_plain(model_dir: str, pairs, corpus) -> tuple[float, np.ndarray]:
    """Batches in input order, each tokenised and padded to its longest pair."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    start = time.perf_counter()
    queries, passages = texts_of(pairs, corpus)
    out = []
    with torch.inference_mode():
        for i in range(0, len(queries), BATCH):
            batch = tokenizer(
                queries[i : i + BATCH],
                passages[i : i + BATCH],
                max_length=MAX_LEN,
                truncation=True,
                padding=True,
                return_tensors="pt",
            )
            out.append(model(**batch).logits[:, 0].numpy())
    return time.perf_counter() - start, np.concatenate(out)


def run_sentence_transformers(model_dir: str, pairs, corpus) -> tuple[float, np.ndarray]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(
        model_dir, num_labels=1, max_length=MAX_LEN, activation_fn=torch.nn.Identity(), device="cpu"
    )
    start = time.perf_counter()
    queries, passages = texts_of(pairs, corpus)
    scores = model.predict(list(zip(queries, passages)), batch_size=BATCH, show_progress_bar=False)
    return time.perf_counter() - start, np.asarray(scores, dtype=np.float32)


def main() -> None:
    import transformers

    from simlm.config import minilm_path

    transformers.logging.set_verbosity_error()
    pairs, corpus = build_pairs()
    methods = {
        "simlm score_pairs (stage=rerank)": run_ours,
        "plain transformers loop": run_plain,
        "sentence-transformers CrossEncoder.predict": run_sentence_transformers,
    }
    best: dict[str, float] = dict.fromkeys(methods, float("inf"))
    scores: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as model_dir:
        save_classifier(minilm_path(), model_dir)
        for fn in methods.values():
            fn(model_dir, pairs[:BATCH], corpus)  # warm-up: thread pools, allocator
        for _ in range(REPEATS):
            for name, fn in methods.items():
                seconds, scores[name] = fn(model_dir, pairs, corpus)
                best[name] = min(best[name], seconds)
    plain = scores["plain transformers loop"]
    st_seconds = best["sentence-transformers CrossEncoder.predict"]
    rows = [
        {
            "method": name,
            "pairs": len(pairs),
            "seconds": round(best[name], 2),
            "pairs_per_s": round(len(pairs) / best[name], 1),
            "vs_sentence_transformers": round(st_seconds / best[name], 3),
            "max_abs_diff_vs_plain": float(np.max(np.abs(scores[name] - plain))),
        }
        for name in methods
    ]
    notes = (
        f"all-MiniLM-L6-v2 as a 1-logit classifier (seeded head), {len(pairs)} demo pairs, batch {BATCH}, "
        f"max length {MAX_LEN}, fp32 CPU, {torch.get_num_threads()} torch threads, best of {REPEATS} "
        f"(interleaved); times include tokenisation; peak RSS {peak_rss_mb():.0f} MiB; "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    report("rerank", rows, notes)


if __name__ == "__main__":
    main()
