"""In-memory dense retrieval over a corpus (or a sub-corpus): used during training and for small corpora."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from simlm.data.corpus import Corpus
from simlm.data.formats import Qrels, Run
from simlm.models.encoder import TextEncoder
from simlm.retrieval.encoding import encode_texts
from simlm.retrieval.index import search, to_run


def sub_corpus_rows(
    corpus: Corpus, qrels: Qrels, max_passages: int | None, seed: int = 0
) -> np.ndarray | None:
    """Rows of every judged passage plus random others up to `max_passages`; None means the whole corpus."""
    if not max_passages or max_passages >= len(corpus):
        return None
    judged = {corpus.row(d) for docs in qrels.values() for d in docs if d in corpus}
    rng = np.random.default_rng(seed)
    others = rng.permutation(len(corpus))
    fill = [int(r) for r in others if int(r) not in judged][: max(0, max_passages - len(judged))]
    return np.array(sorted(judged | set(fill)), dtype=np.int64)


def dense_retrieve(
    encoder: TextEncoder,
    tokenizer: Any,
    corpus: Corpus,
    queries: dict[str, str],
    top_k: int,
    rows: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 128,
    backend: str = "faiss",
    shards: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Run:
    """Encode `queries`, search the corpus rows (all by default) exactly, return the top-k as a `Run`.

    `shards` (`(rows, embeddings)` pairs, e.g. `load_shards(dir)`) are passages this encoder already
    encoded: they are searched instead of encoding `rows` again.
    """
    if shards is None:
        rows_arr = (
            np.arange(len(corpus), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        )
        titles, texts = corpus.titles(rows_arr.tolist()), corpus.texts(rows_arr.tolist())
        p_emb = encode_texts(encoder, tokenizer, titles=titles, texts=texts, batch_size=batch_size)
        shards, n_passages = [(rows_arr, p_emb)], len(rows_arr)
    else:
        n_passages = len(corpus) if rows is None else len(rows)
    qids = list(queries)
    q_emb = encode_texts(encoder, tokenizer, queries=[queries[q] for q in qids], batch_size=batch_size)
    scores, found = search(q_emb, shards, top_k=min(top_k, n_passages), backend=backend)
    return to_run(qids, scores, found, corpus)
