"""Dense text encoder: a Hugging Face backbone + pooling (+ optional linear pooler) + L2 normalisation.

Saved as a Hugging Face folder with its tokenizer and `simlm_retrieval.json` holding the settings a
user needs to reproduce its embeddings (pooling, normalisation, max lengths, prefixes). With separate
query/passage encoders the backbones live in `query_model/` and `passage_model/` sub-folders.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SETTINGS_FILE = "simlm_retrieval.json"
POOLER_FILE = "pooler.safetensors"


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


def load_backbone(name_or_path: str | Path) -> nn.Module:
    """`AutoModel` without BERT's pooler (unused, and it breaks DDP's unused-parameter check)."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(name_or_path), add_pooling_layer=False)
    except TypeError:  # architectures without a pooler do not take the argument
        return AutoModel.from_pretrained(str(name_or_path))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """[CLS] vector or masked mean of the last hidden states."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class TextEncoder(nn.Module):
    """Query and passage encoder (shared by default), producing pooled, optionally normalised vectors."""

    def __init__(
        self, query_model: nn.Module, passage_model: nn.Module | None, settings: RetrievalSettings
    ) -> None:
        super().__init__()
        self.settings = settings
        self.query_model = query_model
        # a shared encoder is the same module object: registered once, so parameters are not duplicated
        self.passage_model = query_model if passage_model is None else passage_model
        hidden = query_model.config.hidden_size
        self.pooler = nn.Linear(hidden, settings.pooler_dim or hidden) if settings.add_pooler else None

    @property
    def shared(self) -> bool:
        return self.passage_model is self.query_model

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides: Any) -> TextEncoder:
        """Load a hub id or folder; settings come from `simlm_retrieval.json` if present, then `overrides`."""
        path = Path(str(name_or_path))
        saved: dict[str, Any] = {}
        if (path / SETTINGS_FILE).is_file():
            saved = json.loads((path / SETTINGS_FILE).read_text())
        settings = RetrievalSettings.from_dict(
            {**saved, **{k: v for k, v in overrides.items() if v is not None}}
        )
        if (path / "query_model").is_dir():
            query_model = load_backbone(path / "query_model")
            passage_model = load_backbone(path / "passage_model")
            if settings.share_encoder:
                log.warning("%s holds separate query/passage encoders; keeping them separate", path)
                settings.share_encoder = False
        else:
            query_model = load_backbone(name_or_path)
            passage_model = None if settings.share_encoder else copy.deepcopy(query_model)
        encoder = cls(query_model, passage_model, settings)
        if encoder.pooler is not None and (path / POOLER_FILE).is_file():
            from safetensors.torch import load_file

            encoder.pooler.load_state_dict(load_file(str(path / POOLER_FILE)))
        return encoder

    def save_pretrained(self, out_dir: str | Path, tokenizer: Any | None = None) -> Path:
        """Write the Hugging Face folder(s), the pooler, the tokenizer and the retrieval settings."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.shared:
            self.query_model.save_pretrained(out_dir)
        else:
            self.query_model.save_pretrained(out_dir / "query_model")
            self.passage_model.save_pretrained(out_dir / "passage_model")
        if self.pooler is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in self.pooler.state_dict().items()}, str(out_dir / POOLER_FILE)
            )
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
            if not self.shared:
                tokenizer.save_pretrained(out_dir / "query_model")
                tokenizer.save_pretrained(out_dir / "passage_model")
        (out_dir / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        return out_dir

    def encode(self, batch: dict[str, torch.Tensor], is_query: bool) -> torch.Tensor:
        """Embeddings of a tokenised batch (`input_ids`, `attention_mask`, optional `token_type_ids`)."""
        model = self.query_model if is_query else self.passage_model
        out = model(**batch)
        emb = pool(out.last_hidden_state, batch["attention_mask"], self.settings.pooling)
        if self.pooler is not None:
            emb = self.pooler(emb)
        if self.settings.l2_normalize:
            emb = F.normalize(emb, dim=-1)
        return emb


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
