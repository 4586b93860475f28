"""The one dense retrieval path: encode queries, search stored shards or an in-memory matrix, return a run.

Every stage and callback that retrieves with a bi-encoder (`stage=search`, the training stages' final
evaluation, retrieval evaluation between epochs, negative mining) goes through `dense_retrieve` or,
for several query sets over one pass of the shards, `encode_and_search`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from simlm.data.corpus import Corpus
from simlm.data.formats import Qrels, Run
from simlm.models.encoder import TextEncoder, load_encoder
from simlm.retrieval.encoding import encode_texts
from simlm.retrieval.index import search, to_run
from simlm.runtime import Runtime

Shards = Iterable[tuple[np.ndarray, np.ndarray]]


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


def encode_passages(
    encoder: TextEncoder,
    tokenizer: Any,
    corpus: Corpus,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int = 128,
    precision: str | None = None,
) -> Shards:
    """The corpus rows (all by default) encoded in memory, as one `(rows, embeddings)` shard."""
    rows_arr = np.arange(len(corpus), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    titles, texts = corpus.titles(rows_arr.tolist()), corpus.texts(rows_arr.tolist())
    emb = encode_texts(
        encoder, tokenizer, titles=titles, texts=texts, batch_size=batch_size, precision=precision
    )
    return [(rows_arr, emb)]


def encode_and_search(
    encoder: TextEncoder,
    tokenizer: Any,
    query_texts: Sequence[str],
    shards: Shards,
    top_k: int,
    *,
    batch_size: int = 128,
    precision: str | None = None,
    backend: str = "faiss",
    query_batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode `query_texts` and search `shards` exactly: `(scores [Q, k], corpus rows [Q, k])`."""
    q_emb = encode_texts(
        encoder, tokenizer, queries=list(query_texts), batch_size=batch_size, precision=precision
    )
    return search(q_emb, shards, top_k=top_k, backend=backend, batch_size=query_batch_size)


def dense_retrieve(
    encoder: TextEncoder,
    tokenizer: Any,
    corpus: Corpus,
    queries: dict[str, str],
    top_k: int,
    rows: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 128,
    backend: str = "faiss",
    shards: Shards | None = None,
    precision: str | None = None,
) -> Run:
    """Encode `queries`, search the corpus rows (all by default) exactly, return the top-k as a `Run`.

    `shards` (`(rows, embeddings)` pairs, e.g. `load_shards(dir)`, or passages already encoded in
    memory) are searched instead of encoding `rows` again.
    """
    if shards is None:
        shards = encode_passages(encoder, tokenizer, corpus, rows, batch_size=batch_size, precision=precision)
        n_passages = len(shards[0][0])
    else:
        n_passages = len(corpus) if rows is None else len(rows)
    qids = list(queries)
    scores, found = encode_and_search(
        encoder,
        tokenizer,
        [queries[q] for q in qids],
        shards,
        min(top_k, n_passages),
        batch_size=batch_size,
        precision=precision,
        backend=backend,
    )
    return to_run(qids, scores, found, corpus)


def score_pairs_dense(
    encoder: TextEncoder,
    tokenizer: Any,
    corpus: Corpus,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 128,
    precision: str | None = None,
) -> np.ndarray:
    """The bi-encoder's score (query vector . passage vector) of each `(query text, doc id)` pair, float32.

    Each distinct query and passage is encoded once, so scoring a run's top candidates costs one
    encode of the passages they hold, not of the corpus.
    """
    if not pairs:
        return np.empty(0, dtype=np.float32)
    texts = list(dict.fromkeys(q for q, _ in pairs))
    rows = sorted({corpus.row(d) for _, d in pairs})
    q_emb = encode_texts(encoder, tokenizer, queries=texts, batch_size=batch_size, precision=precision)
    ((_, p_emb),) = encode_passages(
        encoder, tokenizer, corpus, rows, batch_size=batch_size, precision=precision
    )
    q_at = {q: i for i, q in enumerate(texts)}
    p_at = {r: i for i, r in enumerate(rows)}
    q_idx = np.array([q_at[q] for q, _ in pairs])
    p_idx = np.array([p_at[corpus.row(d)] for _, d in pairs])
    return np.einsum("nd,nd->n", q_emb[q_idx], p_emb[p_idx]).astype(np.float32)


def load_and_score_dense(
    model_cfg: dict[str, Any], corpus: Corpus, pairs: Sequence[tuple[str, str]], runtime: Runtime
) -> np.ndarray:
    """Load the bi-encoder of `model_cfg` (a model config: `name_or_path` and optional retrieval settings,
    as `load_encoder`) onto `runtime`'s device and score the `(query text, doc id)` pairs
    (`score_pairs_dense`) under its precision."""
    encoder, tokenizer = load_encoder(model_cfg)
    encoder = encoder.to(runtime.device)
    return score_pairs_dense(encoder, tokenizer, corpus, pairs, precision=runtime.precision)
