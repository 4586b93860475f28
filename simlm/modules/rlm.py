"""ReplacedLM: SimLM's replaced language modelling pre-training (spec 1.1-1.5).

A generator MLM fills the masked positions of the encoder and decoder inputs with sampled tokens. The
encoder (a BERT-family MaskedLM) predicts the original token at every non-special position; a shallow
decoder (copies of the encoder's last layers) does the same on its more heavily replaced input but sees
the encoder only through the last-layer [CLS] vector. Embeddings and the MLM head are shared.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from simlm.losses import token_ce
from simlm.modules.common import warmup_decay_optimizers

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.safetensors"


@dataclass
class GeneratorSettings:
    """The generator: a pretrained Hugging Face MLM (hub id or folder), or a small fresh one trained jointly.

    `name_or_path=None` builds a randomly initialised MLM from the encoder's config with `num_layers`
    layers and `hidden_size` (default encoder hidden // 3, ELECTRA's generator ratio),
    `num_attention_heads` (default hidden // 64, at least 1) and `intermediate_size` (default 4 x hidden).
    `mlm_weight` scales the generator's MLM loss when it trains (`freeze=false`).
    """

    name_or_path: str | None = "google/electra-base-generator"
    freeze: bool = True
    mlm_weight: float = 0.2
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


def load_mlm(name_or_path: str | Path) -> nn.Module:
    """`AutoModelForMaskedLM` in float32; a checkpoint without an MLM head (e.g. MiniLM) gets a fresh one."""
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(str(name_or_path), dtype=torch.float32)


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
            return load_mlm(settings.name_or_path)
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


def sample_replacements(masked_logits: Tensor, input_ids: Tensor, masked: Tensor) -> Tensor:
    """`input_ids` with its `masked` positions replaced by draws from softmax(masked_logits) (temperature 1).

    `masked_logits [N, V]` are the generator's logits at the N masked positions (row-major order). Sampling
    is over the full vocabulary; the original token may be drawn again.
    """
    out = input_ids.clone()
    if masked_logits.numel():
        probs = torch.softmax(masked_logits.detach().float(), dim=-1)
        out[masked] = torch.multinomial(probs, 1).squeeze(-1)
    return out


class ReplacedLMModule(pl.LightningModule):
    """SimLM's RLM pre-training: loss = L_enc + L_dec (+ mlm_weight * L_gen when the generator trains).

    Batches come from :class:`simlm.data.rlm.RLMCollator`. `save_model` writes the encoder as a Hugging
    Face MaskedLM folder plus `decoder.safetensors`; a `model_name_or_path` holding that file resumes the
    decoder from it.
    """

    def __init__(
        self,
        model_name_or_path: str,
        decoder_layers: int = 2,
        generator: dict[str, Any] | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 4000,
        warmup_type: str = "log",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = load_mlm(model_name_or_path)
        layers = transformer_layers(self.encoder)
        if not 1 <= decoder_layers <= len(layers):
            raise ValueError(f"decoder_layers must be in 1..{len(layers)}, got {decoder_layers}")
        self.decoder = copy.deepcopy(layers[-decoder_layers:])
        if mlm_head(self.encoder) is None:
            raise TypeError(
                f"{type(self.encoder).__name__}: no `cls` or `lm_head` MLM head (RLM needs BERT-family)"
            )
        decoder_file = Path(str(model_name_or_path)) / DECODER_FILE
        if decoder_file.is_file():
            from safetensors.torch import load_file

            self.decoder.load_state_dict(load_file(str(decoder_file)))
            log.info("decoder layers resumed from %s", decoder_file)
        self.gen_settings = GeneratorSettings.from_dict(generator)
        self.generator = build_generator(self.gen_settings, self.encoder.config)
        if self.generator.config.vocab_size != self.encoder.config.vocab_size:
            raise ValueError(
                f"generator vocabulary ({self.generator.config.vocab_size}) differs from the encoder's "
                f"({self.encoder.config.vocab_size}); they must share the tokenizer"
            )
        self.generator.requires_grad_(not self.gen_settings.freeze)
        self._generator_types = "token_type_ids" in inspect.signature(self.generator.forward).parameters
        self.train()

    @property
    def generator_trains(self) -> bool:
        return not self.gen_settings.freeze

    def train(self, mode: bool = True) -> ReplacedLMModule:
        """Set the mode; a frozen generator always stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.generator_trains:
            self.generator.eval()
        return self

    # ------------------------------------------------------------------ forward pieces
    def generator_logits(self, kwargs: dict[str, Tensor], masked: Tensor) -> Tensor:
        """Generator logits `[N, V]` at the `masked` positions (only there when its head is known)."""
        head = mlm_head(self.generator)
        if head is None:
            return self.generator(**kwargs).logits[masked]
        return head(self.generator.base_model(**kwargs).last_hidden_state[masked])

    def replace(self, batch: dict[str, Tensor], side: str, with_loss: bool) -> tuple[Tensor, Tensor]:
        """One generator pass over the `side` ("enc"/"dec") input: (replaced ids, generator MLM loss).

        The loss is differentiable only for the encoder-side pass of a trainable generator.
        """
        ids, labels = batch[f"{side}_input_ids"], batch[f"{side}_labels"]
        masked = labels >= 0
        kwargs = {"input_ids": ids, "attention_mask": batch[f"{side}_attention_mask"]}
        if self._generator_types:
            kwargs["token_type_ids"] = batch[f"{side}_token_type_ids"]
        with torch.set_grad_enabled(with_loss and self.generator_trains and torch.is_grad_enabled()):
            logits = self.generator_logits(kwargs, masked)
            loss = token_ce(logits, labels[masked]) if with_loss else logits.new_zeros(())
        return sample_replacements(logits, ids, masked), loss

    def encode(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """Encoder last-layer hidden states `[B, L, H]`."""
        out = self.encoder.base_model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state

    def decode(self, encoder_hidden: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Decoder last hidden states: [CLS] of `encoder_hidden` at position 0, then the shared embeddings
        of `input_ids[:, 1:]` (token types 0), through the decoder layers with a bidirectional padding mask.
        """
        from transformers.masking_utils import create_bidirectional_mask

        embedded = self.encoder.base_model.embeddings(input_ids=input_ids)
        hidden = torch.cat([encoder_hidden[:, :1], embedded[:, 1:]], dim=1)
        mask = create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in self.decoder:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def token_loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Mean CE of the shared MLM head over the positions with a label (logits only where needed)."""
        keep = labels != -100
        return token_ce(mlm_head(self.encoder)(hidden[keep]), labels[keep])

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """`loss` to back-propagate and the logged `enc_loss`, `dec_loss`, `gen_loss`, `replace_ratio`."""
        enc_ids, gen_loss = self.replace(batch, "enc", with_loss=True)
        dec_ids, _ = self.replace(batch, "dec", with_loss=False)
        labels = batch["labels"]
        attention = batch["enc_attention_mask"]
        enc_hidden = self.encode(enc_ids, attention, batch["enc_token_type_ids"])
        enc_loss = self.token_loss(enc_hidden, labels)
        dec_loss = self.token_loss(self.decode(enc_hidden, dec_ids, attention), labels)
        loss = enc_loss + dec_loss
        if self.generator_trains:
            loss = loss + self.gen_settings.mlm_weight * gen_loss
        replaced = ((enc_ids != labels) & (labels >= 0)).sum()
        return {
            "loss": loss,
            "enc_loss": enc_loss.detach(),
            "dec_loss": dec_loss.detach(),
            "gen_loss": gen_loss.detach(),
            "replace_ratio": replaced / attention.sum().clamp_min(1),
        }

    # ------------------------------------------------------------------ Lightning hooks
    def _log_all(self, prefix: str, out: dict[str, Tensor], batch: dict[str, Tensor], **kwargs: Any) -> None:
        bs = batch["labels"].shape[0]
        self.log(f"{prefix}/loss", out["loss"].detach(), prog_bar=prefix == "train", batch_size=bs, **kwargs)
        metrics = {f"{prefix}/{k}": v for k, v in out.items() if k != "loss"}
        self.log_dict(metrics, batch_size=bs, **kwargs)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.compute_losses(batch)
        self._log_all("train", out, batch)
        return out["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._log_all("val", self.compute_losses(batch), batch, sync_dist=True)

    def configure_optimizers(self):
        return warmup_decay_optimizers(self)

    # ------------------------------------------------------------------ saving
    def save_model(self, out_dir: str | Path, tokenizer: Any | None = None) -> Path:
        """Write the encoder (Hugging Face MaskedLM folder), `decoder.safetensors` and the tokenizer.

        The generator is not saved. `AutoModel` / `TextEncoder.from_pretrained` load the folder as a
        plain encoder (the MLM head is ignored), which is how `stage=biencoder` starts from it.
        """
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out_dir)
        state = {k: v.detach().contiguous().cpu() for k, v in self.decoder.state_dict().items()}
        save_file(state, str(out_dir / DECODER_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        return out_dir
