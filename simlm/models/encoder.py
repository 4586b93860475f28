"""Dense text encoder: a Hugging Face backbone + pooling (+ optional linear pooler) + L2 normalisation.

Saved as a Hugging Face folder with its tokenizer and `simlm_retrieval.json` holding the settings a
user needs to reproduce its embeddings (pooling, normalisation, max lengths, prefixes). With separate
query/passage encoders the backbones live in `query_model/` and `passage_model/` sub-folders.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simlm.data.tokenization import RetrievalSettings, load_tokenizer, tokenize_passages, tokenize_queries
from simlm.models.hub import check_model_source

__all__ = [
    "MODEL_SETTING_KEYS",
    "SETTINGS_FILE",
    "RetrievalSettings",
    "TextEncoder",
    "embedding_dim",
    "load_encoder",
    "load_tokenizer",
    "settings_source",
    "tokenize_passages",
    "tokenize_queries",
]

log = logging.getLogger(__name__)

SETTINGS_FILE = "simlm_retrieval.json"
POOLER_FILE = "pooler.safetensors"
# The `model` config group keys that are retrieval settings (the rest: name_or_path, lr, ...).
MODEL_SETTING_KEYS = (
    "pooling",
    "l2_normalize",
    "q_max_len",
    "p_max_len",
    "query_prefix",
    "passage_prefix",
    "passage_format",
)


def backbone_config(name_or_path: str | Path, attention_dropout: float | None = None) -> Any:
    """The checkpoint's `AutoConfig`, with its attention-probability dropout set to `attention_dropout`.

    None keeps the checkpoint's. PyTorch's CPU attention has no fused kernel that applies dropout: with
    attention dropout in train mode it materialises every attention matrix (about 2x the time and memory).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(name_or_path))
    if attention_dropout is not None:
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"model.attention_dropout must be in [0, 1), got {attention_dropout}")
        names = [n for n in ("attention_probs_dropout_prob", "attention_dropout") if hasattr(config, n)]
        if not names:
            raise ValueError(f"{name_or_path}: its config has no attention dropout setting to change")
        for n in names:
            setattr(config, n, float(attention_dropout))
    return config


def load_with_new_weights(
    auto_class: Any, name_or_path: str | Path, config: Any
) -> tuple[nn.Module, list[str]]:
    """`auto_class.from_pretrained` in float32, and the names of the parameters the checkpoint did not
    hold (a head it lacked, randomly initialised)."""
    model, info = auto_class.from_pretrained(
        str(name_or_path), config=config, output_loading_info=True, dtype=torch.float32
    )
    params = {name for name, _ in model.named_parameters()}
    return model, sorted(set(info.get("missing_keys") or ()) & params)


def load_backbone(name_or_path: str | Path, attention_dropout: float | None = None) -> nn.Module:
    """`AutoModel` in float32, without BERT's pooler (unused, and it breaks DDP's unused-parameter check)."""
    from transformers import AutoModel

    config = backbone_config(name_or_path, attention_dropout)
    # fp32 master weights whatever dtype the checkpoint was saved in (SimLM's releases are float16)
    try:
        return AutoModel.from_pretrained(
            str(name_or_path), config=config, add_pooling_layer=False, dtype=torch.float32
        )
    except TypeError:  # architectures without a pooler do not take the argument
        return AutoModel.from_pretrained(str(name_or_path), config=config, dtype=torch.float32)


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
    def from_pretrained(
        cls, name_or_path: str | Path, attention_dropout: float | None = None, **overrides: Any
    ) -> TextEncoder:
        """Load a hub id or folder; settings come from `simlm_retrieval.json` if present, then `overrides`.

        `attention_dropout`: see `backbone_config` (None: the checkpoint's)."""
        check_model_source(name_or_path)
        path = Path(str(name_or_path))
        saved: dict[str, Any] = {}
        if (path / SETTINGS_FILE).is_file():
            saved = json.loads((path / SETTINGS_FILE).read_text())
        settings = RetrievalSettings.from_dict(
            {**saved, **{k: v for k, v in overrides.items() if v is not None}}
        )
        if (path / "query_model").is_dir():
            query_model = load_backbone(path / "query_model", attention_dropout)
            passage_model = load_backbone(path / "passage_model", attention_dropout)
            if settings.share_encoder:
                log.warning("%s holds separate query/passage encoders; keeping them separate", path)
                settings.share_encoder = False
        else:
            query_model = load_backbone(name_or_path, attention_dropout)
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


def settings_source(model_cfg: Any) -> str:
    """Where `load_encoder` takes the retrieval settings of `model_cfg` from, in words (for the logs)."""
    settings_file = Path(str(model_cfg["name_or_path"])) / SETTINGS_FILE
    if not settings_file.is_file():
        return f"the model config (no {SETTINGS_FILE} in {model_cfg['name_or_path']})"
    if bool(model_cfg.get("override_saved_settings", False)):
        return f"the model config (+model.override_saved_settings=true; {settings_file} ignored)"
    return f"its saved {settings_file}"


def load_encoder(model_cfg: Any) -> tuple[TextEncoder, Any]:
    """`(TextEncoder, tokenizer)` of the `model` config group (`name_or_path` is a hub id or a folder).

    Precedence: a folder saved by this project carries `simlm_retrieval.json`, and its settings win
    (they are how the model was trained); the group's `pooling`, `l2_normalize`, max lengths and prefixes
    are used only for folders/hub ids without that file. Differences are logged, and so is where the
    settings came from (`settings_source`). Set `+model.override_saved_settings=true` to make the config
    win instead.
    """
    import transformers

    transformers.logging.set_verbosity_error()  # the LOAD REPORT of ignored BERT pooler weights is noise
    name = str(model_cfg["name_or_path"])
    config_values = {
        k: model_cfg[k] for k in MODEL_SETTING_KEYS if k in model_cfg and model_cfg[k] is not None
    }
    settings_file = Path(name) / SETTINGS_FILE
    override = bool(model_cfg.get("override_saved_settings", False))
    if settings_file.is_file() and not override:
        saved = json.loads(settings_file.read_text())
        differing = {k: (saved[k], v) for k, v in config_values.items() if k in saved and saved[k] != v}
        if differing:
            log.warning(
                "%s: using its saved settings over the model config for %s (saved, config); "
                "+model.override_saved_settings=true makes the config win",
                settings_file,
                differing,
            )
        encoder = TextEncoder.from_pretrained(name)
    else:
        encoder = TextEncoder.from_pretrained(name, **config_values)
    log.info("%s: retrieval settings from %s: %s", name, settings_source(model_cfg), asdict(encoder.settings))
    return encoder, load_tokenizer(name)


def embedding_dim(encoder: TextEncoder) -> int:
    """Size of the vectors `encoder` produces."""
    if encoder.pooler is not None:
        return int(encoder.pooler.out_features)
    return int(encoder.query_model.config.hidden_size)
