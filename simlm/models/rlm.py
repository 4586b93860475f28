"""The RLM models: generator (a pretrained or small fresh MLM), encoder MaskedLM and shallow decoder.

The decoder is a copy of the encoder's last layers (SimLM: 2), reading the encoder only through the
last-layer [CLS] vector; it is saved as `decoder.safetensors` next to the encoder's folder.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from simlm.models.encoder import backbone_config, load_with_new_weights
from simlm.models.hub import check_model_source

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.safetensors"


@dataclass
class GeneratorSettings:
    """The generator: a pretrained Hugging Face MLM (hub id or folder), or a small fresh one trained jointly.

    `name_or_path=None` builds a randomly initialised MLM from the encoder's config with `num_layers`
    layers and `hidden_size` (default encoder hidden // 3, ELECTRA's generator ratio),
    `num_attention_heads` (default hidden // 64, at least 1) and `intermediate_size` (default 4 x hidden).
    `mlm_weight` scales the generator's MLM loss when it trains (`freeze=false`). `train_mode`: the
    generator samples with its dropout on during training, as in SimLM's trainer (which never puts it in
    eval mode); false keeps a frozen generator in eval mode (deterministic replacements).
    """

    name_or_path: str | None = "google/electra-base-generator"
    freeze: bool = True
    mlm_weight: float = 0.2
    train_mode: bool = True
    num_layers: int = 2
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> GeneratorSettings:
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown generator settings {sorted(unknown)}")
        return cls(**values)


def load_mlm(
    name_or_path: str | Path,
    attention_dropout: float | None = None,
    key: str = "model.name_or_path",
    with_new_weights: bool = False,
) -> nn.Module | tuple[nn.Module, list[str]]:
    """`AutoModelForMaskedLM` in float32; a checkpoint without an MLM head (e.g. MiniLM) gets a fresh one.

    `attention_dropout`: see `simlm.models.encoder.backbone_config` (None: the checkpoint's).
    `key`: the config key that named the model, for the error when it is neither a folder nor a hub id.
    `with_new_weights`: return `(model, names)`, the names of the parameters the checkpoint did not hold.
    """
    check_model_source(name_or_path, key)
    from transformers import AutoModelForMaskedLM

    loaded = load_with_new_weights(
        AutoModelForMaskedLM, name_or_path, backbone_config(name_or_path, attention_dropout)
    )
    return loaded if with_new_weights else loaded[0]


def mlm_head(model: nn.Module) -> nn.Module | None:
    """The prediction head (hidden states -> vocabulary logits) of a BERT-family or ELECTRA MaskedLM, if known."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    if hasattr(model, "generator_predictions") and hasattr(model, "generator_lm_head"):  # ELECTRA
        return nn.Sequential(model.generator_predictions, model.generator_lm_head)
    return None


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder layer stack (`<base>.encoder.layer`) of a BERT-family model."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: no `encoder.layer` stack (RLM needs a BERT-family encoder)")
    return layers


def build_generator(settings: GeneratorSettings, encoder_config: Any) -> nn.Module:
    """Load the pretrained generator, or build a small randomly initialised MLM from the encoder's config."""
    if settings.name_or_path is not None:
        try:
            return load_mlm(settings.name_or_path, key="stage.module.generator.name_or_path")
        except OSError as e:
            raise OSError(
                f"cannot load generator {settings.name_or_path!r} ({e}). Offline, train a small generator "
                "jointly: stage.module.generator.name_or_path=null stage.module.generator.freeze=false"
            ) from e
    if settings.freeze:
        raise ValueError(
            "a randomly initialised generator must be trained: set stage.module.generator.freeze=false "
            "(or give generator.name_or_path)"
        )
    from transformers import AutoModelForMaskedLM

    config = copy.deepcopy(encoder_config)
    hidden = settings.hidden_size or max(1, encoder_config.hidden_size // 3)
    heads = settings.num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"generator hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    config.hidden_size = hidden
    config.num_hidden_layers = settings.num_layers
    config.num_attention_heads = heads
    config.intermediate_size = settings.intermediate_size or 4 * hidden
    if hasattr(config, "embedding_size"):
        config.embedding_size = hidden
    return AutoModelForMaskedLM.from_config(config)


def build_decoder(
    encoder: nn.Module, num_layers: int, name_or_path: str | Path | None = None
) -> nn.ModuleList:
    """Copies of the encoder's last `num_layers` layers; resumed from `<name_or_path>/decoder.safetensors`."""
    layers = transformer_layers(encoder)
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"decoder_layers must be in 1..{len(layers)}, got {num_layers}")
    decoder = copy.deepcopy(layers[-num_layers:])
    if mlm_head(encoder) is None:
        raise TypeError(f"{type(encoder).__name__}: no `cls` or `lm_head` MLM head (RLM needs BERT-family)")
    decoder_file = Path(str(name_or_path)) / DECODER_FILE if name_or_path is not None else None
    if decoder_file is not None and decoder_file.is_file():
        from safetensors.torch import load_file

        decoder.load_state_dict(load_file(str(decoder_file)))
        log.info("decoder layers resumed from %s", decoder_file)
    return decoder
