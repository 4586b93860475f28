"""BM25 retrieval with bm25s (Lucene scoring, English stemming and stop words)."""

from __future__ import annotations

import logging

import numpy as np

from simlm.data.corpus import Corpus
from simlm.data.formats import Run, rank_scores

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s logs every indexing step at DEBUG


class BM25Retriever:
    """Index a corpus (title + text) and retrieve top-k passages per query.

    Defaults are Anserini's MS MARCO settings (k1=0.9, b=0.4); BEIR's published figures use
    Elasticsearch's (k1=1.2, b=0.75).
    """

    def __init__(
        self,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        n_threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        import bm25s
        from bm25s.tokenization import Tokenizer

        stem_fn = None
        if stemmer:
            import Stemmer

            stem_fn = Stemmer.Stemmer(stemmer).stemWord
        self._tokenizer = Tokenizer(stopwords=stopwords or [], stemmer=stem_fn)
        self._model = bm25s.BM25(k1=k1, b=b, method=method)
        self._n_threads = n_threads
        self._show_progress = show_progress
        self._corpus: Corpus | None = None

    def index(self, corpus: Corpus) -> BM25Retriever:
        """Tokenize and index every passage as `title + " " + text`."""
        texts = [f"{t} {x}" if t else x for t, x in zip(corpus.titles(), corpus.texts())]
        tokens = self._tokenizer.tokenize(
            texts, update_vocab=True, return_as="ids", show_progress=self._show_progress
        )
        self._model.index(tokens, show_progress=self._show_progress)
        self._corpus = corpus
        log.info("BM25 index: %d passages, %d terms", len(corpus), len(self._tokenizer.get_vocab_dict()))
        return self

    def search(self, queries: dict[str, str], top_k: int) -> Run:
        """Top-`top_k` passages per query, ranked by score with ties broken by passage id."""
        if self._corpus is None:
            raise RuntimeError("call index() before search()")
        qids = list(queries)
        if not qids:
            return {}
        k = min(top_k, len(self._corpus))
        tokens = self._tokenizer.tokenize(
            [queries[q] for q in qids], update_vocab=False, return_as="ids", show_progress=self._show_progress
        )
        rows, scores = self._model.retrieve(
            tokens, k=k, show_progress=self._show_progress, n_threads=self._n_threads
        )
        doc_ids = np.asarray(self._corpus.ids(), dtype=object)
        run: Run = {}
        for i, qid in enumerate(qids):
            keep = scores[i] > 0  # a passage sharing no term with the query is not a retrieval result
            run[qid] = rank_scores(
                zip(doc_ids[rows[i][keep]].tolist(), scores[i][keep].astype(float).tolist())
            )
        return run

    def score_pairs(self, queries: dict[str, str], pairs: list[tuple[str, str]]) -> np.ndarray:
        """BM25 score of each `(query_id, doc_id)` pair (0 where they share no term), as `search` scores it."""
        if self._corpus is None:
            raise RuntimeError("call index() before score_pairs()")
        qids = list(dict.fromkeys(q for q, _ in pairs))
        tokens = self._tokenizer.tokenize(
            [queries[q] for q in qids], update_vocab=False, return_as="ids", show_progress=False
        )
        by_query = {
            qid: self._model.get_scores(list(ids)) if len(ids) else None for qid, ids in zip(qids, tokens)
        }
        out = np.zeros(len(pairs), dtype=np.float64)
        for i, (qid, doc_id) in enumerate(pairs):
            scores = by_query[qid]
            if scores is not None:
                out[i] = float(scores[self._corpus.row(doc_id)])
        return out
