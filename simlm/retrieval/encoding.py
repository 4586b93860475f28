"""Dense encoding in memory: tokenise once without padding, encode in length-sorted batches (each padded
with `tokenizer.pad` to its own longest sequence), put the vectors back in input order.

`simlm.retrieval.store` writes a corpus encoded this way into resumable shards on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from simlm.models.encoder import (
    RetrievalSettings,
    TextEncoder,
    embedding_dim,
    tokenize_passages,
    tokenize_queries,
)
from simlm.progress import progress_bar
from simlm.runtime import autocast, batch_token_budget, length_sorted_batches

log = logging.getLogger(__name__)


def tokenize_texts(
    tokenizer: Any,
    settings: RetrievalSettings,
    queries: Sequence[str] | None,
    titles: Sequence[str] | None,
    texts: Sequence[str] | None,
) -> tuple[dict[str, list[list[int]]], bool]:
    """Unpadded token features of `queries`, or of passages (`texts`, optional `titles`); and `is_query`."""
    if queries is not None:
        if texts is not None or titles is not None:
            raise ValueError("pass either queries or titles/texts, not both")
        if not queries:  # tokenizers reject an empty batch
            return {"input_ids": []}, True
        enc = tokenize_queries(tokenizer, list(queries), settings, pad=False)
        is_query = True
    else:
        if texts is None:
            raise ValueError("pass queries, or texts (with optional titles) for passages")
        titles = [""] * len(texts) if titles is None else list(titles)
        if len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
        if not texts:
            return {"input_ids": []}, False
        enc = tokenize_passages(tokenizer, titles, list(texts), settings, pad=False)
        is_query = False
    return {k: list(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}, is_query


def encode_features(
    encoder: TextEncoder,
    tokenizer: Any,
    features: dict[str, list[list[int]]],
    *,
    is_query: bool,
    batch_size: int,
    device: torch.device,
    precision: str | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Encode unpadded features longest-first (little padding) and return float32 rows in input order.

    Batches hold at most `batch_size` rows, and on a CPU at most `simlm.runtime.CPU_BATCH_TOKENS` padded
    tokens (long passages go in smaller batches, which run faster there).

    Autocast follows `precision` (`simlm.runtime.parse_precision`; None: full precision).
    """
    n = len(features["input_ids"])
    out = np.empty((n, embedding_dim(encoder)), dtype=np.float32)
    if n == 0:
        return out
    lengths = [len(ids) for ids in features["input_ids"]]
    pad_multiple = 8 if device.type == "cuda" else None  # tensor-core friendly shapes, as SimLM
    batches = progress_bar(
        length_sorted_batches(lengths, batch_size, batch_token_budget(device)),
        "encode queries" if is_query else "encode passages",
        progress,
    )
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode(), autocast(precision, device):
            for idx in batches:
                batch = tokenizer.pad(
                    {k: [v[i] for i in idx] for k, v in features.items()},
                    return_tensors="pt",
                    pad_to_multiple_of=pad_multiple,
                )
                batch = {k: t.to(device, non_blocking=True) for k, t in batch.items()}
                out[idx] = encoder.encode(batch, is_query=is_query).float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out


def encoder_device(encoder: TextEncoder) -> torch.device:
    """The device of the encoder's parameters."""
    return next(encoder.parameters()).device


def encode_texts(
    encoder: TextEncoder,
    tokenizer: Any,
    *,
    queries: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    precision: str | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Embeddings `[n, dim]` float32 of `queries`, or of passages (`texts` with optional `titles`).

    Runs in eval mode under `torch.inference_mode` (the previous train/eval mode is restored, so a
    training callback can call it), in length-sorted batches; rows come back in input order.
    `device=None` keeps the encoder where it is; otherwise the encoder is moved to `device`.
    `precision`: autocast as `simlm.runtime` parses it (`16-mixed` is float16 on CUDA only).
    """
    if device is None:
        device = encoder_device(encoder)
    else:
        device = torch.device(device)
        encoder.to(device)
    features, is_query = tokenize_texts(tokenizer, encoder.settings, queries, titles, texts)
    return encode_features(
        encoder,
        tokenizer,
        features,
        is_query=is_query,
        batch_size=batch_size,
        device=device,
        precision=precision,
        progress=progress,
    )
