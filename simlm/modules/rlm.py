"""ReplacedLM: SimLM's replaced language modelling pre-training (the paper's section 3; the original `src/models/rlm.py`).

A generator MLM fills the masked positions of the encoder and decoder inputs with sampled tokens. The
encoder (a BERT-family MaskedLM) predicts the original token at every non-special position; a shallow
decoder (copies of the encoder's last layers) does the same on its more heavily replaced input but sees
the encoder only through the last-layer [CLS] vector. Embeddings and the MLM head are shared.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from simlm.losses import token_ce
from simlm.models.rlm import (
    DECODER_FILE,
    GeneratorSettings,
    build_decoder,
    build_generator,
    load_mlm,
    mlm_head,
)
from simlm.modules.common import warmup_decay_optimizers

__all__ = ["DECODER_FILE", "OBJECTIVES", "ReplacedLMModule", "sample_replacements"]

log = logging.getLogger(__name__)


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


OBJECTIVES = ("rlm", "mlm")


class ReplacedLMModule(pl.LightningModule):
    """SimLM's RLM pre-training: loss = L_enc + L_dec (+ mlm_weight * L_gen when the generator trains).

    Batches come from :class:`simlm.data.rlm.RLMCollator`. `save_model` writes the encoder as a Hugging
    Face MaskedLM folder plus `decoder.safetensors`; a `model_name_or_path` holding that file resumes the
    decoder from it. `attention_dropout`: the encoder's (`model.attention_dropout`; None: the checkpoint's).
    `objective="mlm"` is the control SimLM's claim is measured against: plain masked language modelling of
    the encoder on the same masked inputs (loss at the masked positions only; no generator, no decoder,
    no [CLS] bottleneck), at the same budget.
    `head_lr`: peak lr of what starts random: the MLM head's weights the checkpoint lacked (MiniLM has no
    head) and a fresh generator; default `lr`. With a low `lr`, which keeps an embedding model's weights
    close to where they started, random heads would otherwise stay random for a short budget, and the
    encoder would learn from their noise.
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
        attention_dropout: float | None = None,
        objective: str = "rlm",
        head_lr: float | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"stage.module.objective must be one of {OBJECTIVES}, got {objective!r}")
        self.save_hyperparameters()
        self.objective = objective
        self.encoder, new_weights = load_mlm(model_name_or_path, attention_dropout, with_new_weights=True)
        self.param_lrs = {f"encoder.{name}": head_lr for name in new_weights} if head_lr else {}
        self.gen_settings = GeneratorSettings.from_dict(generator)
        if objective == "mlm":
            self.decoder = self.generator = None
            self.train()
            return
        self.decoder = build_decoder(self.encoder, decoder_layers, model_name_or_path)
        self.generator = build_generator(self.gen_settings, self.encoder.config)
        if self.generator.config.vocab_size != self.encoder.config.vocab_size:
            raise ValueError(
                f"generator vocabulary ({self.generator.config.vocab_size}) differs from the encoder's "
                f"({self.encoder.config.vocab_size}); they must share the tokenizer"
            )
        self.generator.requires_grad_(not self.gen_settings.freeze)
        if head_lr and self.gen_settings.name_or_path is None:
            self.param_lrs.update(
                {f"generator.{name}": head_lr for name, _ in self.generator.named_parameters()}
            )
        self._generator_types = "token_type_ids" in inspect.signature(self.generator.forward).parameters
        self.train()

    @property
    def generator_trains(self) -> bool:
        return self.generator is not None and not self.gen_settings.freeze

    def train(self, mode: bool = True) -> ReplacedLMModule:
        """Set the mode; a frozen generator with `train_mode: false` stays in eval mode (no dropout)."""
        super().train(mode)
        if self.generator is not None and not (self.generator_trains or self.gen_settings.train_mode):
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
        """`loss` to back-propagate and the logged `enc_loss`, `dec_loss`, `gen_loss`, `replace_ratio`
        (`objective="mlm"`: `loss` = `enc_loss`, the masked positions' CE of the [MASK]ed input)."""
        if self.objective == "mlm":
            hidden = self.encode(
                batch["enc_input_ids"], batch["enc_attention_mask"], batch["enc_token_type_ids"]
            )
            enc_loss = self.token_loss(hidden, batch["enc_labels"])
            return {"loss": enc_loss, "enc_loss": enc_loss.detach()}
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
        if self.decoder is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.decoder.state_dict().items()}
            save_file(state, str(out_dir / DECODER_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        return out_dir
