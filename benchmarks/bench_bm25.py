"""BM25 quality on BEIR SciFact test next to the published BEIR figure, and our overhead over raw bm25s."""

from __future__ import annotations

import time

from benchmarks.common import SCIFACT, best_of, peak_rss_mb, report
from simlm.data.dataset import RetrievalData
from simlm.evaluation import evaluate_run
from simlm.retrieval.bm25 import BM25Retriever

BEIR_BM25_NDCG10 = 0.665  # BEIR paper, Elasticsearch BM25 (multifield)


def main() -> dict:
    if not (SCIFACT / "corpus.jsonl").exists():
        print(f"SciFact not found at {SCIFACT}: skipping the bm25 benchmark")
        return {}
    data = RetrievalData(SCIFACT, layout="beir")
    corpus, queries, qrels = data.corpus, data.queries("test"), data.qrels("test")

    def ours():
        return BM25Retriever().index(corpus).search(queries, top_k=1000)

    def raw():
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
        texts = [f"{t} {x}" for t, x in zip(corpus.titles(), corpus.texts())]
        model = bm25s.BM25(k1=0.9, b=0.4)
        model.index(
            bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False
        )
        q_tokens = bm25s.tokenize(
            list(queries.values()), stopwords="en", stemmer=stemmer, show_progress=False
        )
        return model.retrieve(q_tokens, k=1000, show_progress=False)

    t_ours, run = best_of(ours)
    t_raw, _ = best_of(raw)
    m = evaluate_run(run, qrels)
    rows = [
        {
            "system": "simlm stage=bm25 (k1=0.9, b=0.4, stemmed)",
            "ndcg@10": m["ndcg@10"],
            "mrr@10": m["mrr@10"],
            "recall@100": m["recall@100"],
            "seconds": t_ours,
            "time_ratio_vs_raw_bm25s": t_ours / t_raw,
        },
        {"system": "raw bm25s, same settings (reference)", "seconds": t_raw, "time_ratio_vs_raw_bm25s": 1.0},
        {"system": "BEIR paper BM25 (published)", "ndcg@10": BEIR_BM25_NDCG10},
    ]
    return report(
        "bm25",
        rows,
        notes=f"SciFact test, 300 queries, 5,183 passages; ndcg ratio vs BEIR {m['ndcg@10'] / BEIR_BM25_NDCG10:.3f}; "
        f"peak RSS {peak_rss_mb():.0f} MiB",
    )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
