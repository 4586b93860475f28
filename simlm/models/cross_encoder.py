"""The cross-encoder (re-ranker): a sequence-classification model with one logit per (query, passage) pair.

Pairs are `[CLS] query [SEP] title: text [SEP]` (`passage_text`), truncated longest-first to
`max_length` (SimLM: 192 for MS MARCO); the score is the raw logit.
"""

from __future__ import annotations

from typing import Any

import torch

from simlm.data.tokenization import MAX_LENGTH, passage_text, tokenize_pairs
from simlm.models.encoder import backbone_config, load_with_new_weights
from simlm.models.hub import check_model_source

__all__ = ["MAX_LENGTH", "load_reranker", "load_reranker_model", "passage_text", "tokenize_pairs"]


def load_reranker_model(
    name_or_path: str,
    with_new_weights: bool = False,
    attention_dropout: float | None = None,
    key: str = "model.name_or_path",
) -> Any:
    """`AutoModelForSequenceClassification` with one logit, in float32 (hub id or folder; encoder-only
    checkpoints such as ELECTRA's discriminator or BERT/MiniLM get a newly initialised head).

    `with_new_weights`: return `(model, names)`, the names of the parameters the checkpoint did not hold.
    `attention_dropout`: see `simlm.models.encoder.backbone_config` (None: the checkpoint's).
    `key`: the config key that named the model, for the error when it is neither a folder nor a hub id.
    """
    check_model_source(name_or_path, key)
    from transformers import AutoModelForSequenceClassification

    config = backbone_config(name_or_path, attention_dropout)
    config.num_labels = 1
    loaded = load_with_new_weights(AutoModelForSequenceClassification, name_or_path, config)
    return loaded if with_new_weights else loaded[0]


def load_reranker(name_or_path: str, key: str = "model.name_or_path") -> tuple[torch.nn.Module, Any]:
    """The one-logit model of `load_reranker_model` and its tokenizer."""
    from transformers import AutoTokenizer

    return load_reranker_model(name_or_path, key=key), AutoTokenizer.from_pretrained(str(name_or_path))
