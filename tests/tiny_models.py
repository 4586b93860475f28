"""Tiny randomly initialised BERT models saved as Hugging Face folders, for fast offline tests.

Every later stage loads them through `from_pretrained(folder)`, the same path hub ids take.
"""

from __future__ import annotations

import builtins
import inspect
from pathlib import Path

TINY_HIDDEN = 32
TINY_LAYERS = 2


def fixture_text() -> list[str]:
    """Deterministic English training text for the tokenizer: docstrings of builtins and a few modules."""
    import collections
    import json
    import os
    import pathlib
    import re

    texts = [inspect.getdoc(getattr(builtins, name)) or "" for name in sorted(dir(builtins))]
    for module in (collections, json, os, pathlib, re):
        texts.append(inspect.getdoc(module) or "")
        texts += [
            inspect.getdoc(getattr(module, n)) or "" for n in sorted(dir(module)) if not n.startswith("_")
        ]
    return [t for t in texts if t]


def build_tokenizer(out_dir: Path, vocab_size: int = 2000):
    """Train an uncased WordPiece tokenizer (BERT special tokens) on `fixture_text` and save it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=1)
    tok.train_from_iterator(fixture_text(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True, model_max_length=512)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_bert(out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 BERT with an MLM head and its tokenizer, saved under `out_dir`."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(out_dir)
    return out_dir
