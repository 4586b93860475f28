"""Text -> token ids for every model: bi-encoder queries and passages, cross-encoder pairs.

Tokenisation lives in the data layer because the collators of `simlm.data` need it; the models layer
(`simlm.models.encoder`, `simlm.models.cross_encoder`) re-exports it next to the models that use it.
Bi-encoder inputs follow SimLM: queries `[CLS] q [SEP]`, passages `[CLS] title [SEP] text [SEP]`
(token types 0/1). Cross-encoder pairs are `[CLS] query [SEP] title: text [SEP]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# SimLM's cross-encoder max length for MS MARCO (query + passage)
MAX_LENGTH = 192


@dataclass
class RetrievalSettings:
    """How text becomes a vector; stored next to the weights so encoding is reproducible."""

    pooling: str = "cls"  # "cls" (SimLM) or "mean"
    l2_normalize: bool = True
    q_max_len: int = 32
    p_max_len: int = 144
    query_prefix: str = ""
    passage_prefix: str = ""
    add_pooler: bool = False
    pooler_dim: int | None = None
    share_encoder: bool = True
    # "pair": [CLS] title [SEP] text [SEP] with token types 0/1 (SimLM); "concat": one segment "title text"
    # (how sentence-transformers/BEIR encode titled passages)
    passage_format: str = "pair"

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.passage_format not in ("pair", "concat"):
            raise ValueError(f"passage_format must be 'pair' or 'concat', got {self.passage_format!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RetrievalSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer saved with a model (or of a hub id)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path))


def tokenize_queries(
    tokenizer: Any, queries: list[str], settings: RetrievalSettings, pad: bool = True
) -> dict:
    """`[CLS] prefix+query [SEP]`, truncated to `q_max_len`."""
    texts = [settings.query_prefix + q for q in queries]
    return tokenizer(
        texts,
        max_length=settings.q_max_len,
        truncation=True,
        padding=pad,
        return_tensors="pt" if pad else None,
    )


def tokenize_passages(
    tokenizer: Any, titles: list[str], texts: list[str], settings: RetrievalSettings, pad: bool = True
) -> dict:
    """`[CLS] prefix+title [SEP] text [SEP]` (token types 0/1), truncated to `p_max_len`.

    An empty title still gives the pair, `[CLS] [SEP] text [SEP]`, as SimLM's bi-encoder always
    tokenises `(title, contents)` (`src/loaders/biencoder_dataloader.py`). With
    `passage_format="concat"`: one segment `prefix + title + " " + text` (the text alone when untitled).
    """
    prefix = settings.passage_prefix
    kwargs = {
        "max_length": settings.p_max_len,
        "truncation": True,
        "padding": pad,
        "return_tensors": "pt" if pad else None,
    }
    if settings.passage_format == "concat":
        return tokenizer([prefix + (f"{t} {x}" if t else x) for t, x in zip(titles, texts)], **kwargs)
    return tokenizer([prefix + t for t in titles], list(texts), **kwargs)


def passage_text(title: str, text: str) -> str:
    """SimLM's cross-encoder passage: `title: text`, or the text alone when there is no title."""
    return f"{title}: {text}" if title else text


def tokenize_pairs(
    tokenizer: Any, queries: Sequence[str], passages: Sequence[str], max_length: int, pad: bool = True
) -> Any:
    """Tokenise (query, passage) pairs, truncated longest-first to `max_length`."""
    return tokenizer(
        list(queries),
        list(passages),
        max_length=max_length,
        truncation=True,
        padding=pad,
        return_tensors="pt" if pad else None,
    )
