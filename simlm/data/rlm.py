"""RLM pre-training data: corpus passages, SimLM's whole-word masking collator and the LightningDataModule.

Masking follows SimLM's `src/collators/collator_utils.py`: per sequence, whole words are drawn in shuffled order until the budget
round(L * p) is reached (a word that would exceed it is skipped); the decoder mask is the encoder mask
united with an independent mask of probability (p_dec - p_enc) / (1 - p_enc); masked positions become
[MASK] (SimLM's script) or follow BERT's 80/10/10 rule.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simlm.data.corpus import Corpus
from simlm.data.datamodules import CorpusDataModule
from simlm.data.dataset import RetrievalData
from simlm.data.tokenization import load_tokenizer

log = logging.getLogger(__name__)

IGNORE = -100
MAX_MASKED = 512  # SimLM's cap on masked tokens per sequence


# ------------------------------------------------------------------------------------------ masking


def mask_budget(length: int, prob: float) -> int:
    """Masked-token budget of a sequence of `length` tokens (specials included): min(512, max(1, round(L·p)))."""
    return min(MAX_MASKED, max(1, round(length * prob)))


def word_groups(tokens: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Positions grouped into whole words: a `##` token joins the previous word; special tokens are left out."""
    groups: list[list[int]] = []
    prev_special = True
    for i, (tok, is_special) in enumerate(zip(tokens, special)):
        if is_special:
            prev_special = True
            continue
        if tok.startswith("##") and groups and not prev_special:
            groups[-1].append(i)
        else:
            groups.append([i])
        prev_special = False
    return groups


def whole_word_mask(groups: list[list[int]], length: int, prob: float, rng: random.Random) -> list[int]:
    """Positions of whole words drawn in random order, skipping words that would exceed `mask_budget`."""
    budget = mask_budget(length, prob)
    order = list(range(len(groups)))
    rng.shuffle(order)
    chosen: list[int] = []
    for g in order:
        if len(chosen) >= budget:
            break
        if len(chosen) + len(groups[g]) > budget:
            continue
        chosen.extend(groups[g])
    return sorted(chosen)


def extra_mask_prob(encoder_prob: float, decoder_prob: float) -> float:
    """Probability of the decoder's independent extra mask so that E|M_enc ∪ M_extra| / L = decoder_prob."""
    return (decoder_prob - encoder_prob) / (1.0 - encoder_prob)


class RLMCollator:
    """Tokenises (title, text) passages and builds the encoder and decoder inputs of replaced LM.

    Returns `enc_*` / `dec_*` `input_ids`, `attention_mask`, `token_type_ids` and `labels` (original id at
    masked positions, -100 elsewhere), plus `labels`: the original ids with every special token at -100.
    Randomness comes from Python's `random` and torch's global generator (Lightning seeds them per
    dataloader worker) unless `seed` is given.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 144,
        encoder_mask_prob: float = 0.3,
        decoder_mask_prob: float = 0.5,
        all_use_mask_token: bool = True,
        pad_to_multiple_of: int | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < encoder_mask_prob <= decoder_mask_prob <= 1.0:
            raise ValueError(
                f"need 0 < encoder_mask_prob <= decoder_mask_prob <= 1, got {encoder_mask_prob}, {decoder_mask_prob}"
            )
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no [MASK] token")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.encoder_mask_prob = encoder_mask_prob
        self.decoder_mask_prob = decoder_mask_prob
        self.all_use_mask_token = all_use_mask_token
        self.pad_to_multiple_of = pad_to_multiple_of
        self.rng: random.Random = random.Random(seed) if seed is not None else random  # type: ignore[assignment]
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.special_ids = set(tokenizer.all_special_ids)
        self.vocab_size = len(tokenizer)

    def tokenize(self, titles: list[str], texts: list[str]) -> dict[str, list[list[int]]]:
        """`[CLS] title [SEP] text [SEP]` (token types 0/1) when the batch has titles, else `[CLS] text [SEP]`."""
        kwargs = {"max_length": self.max_length, "truncation": True}
        if any(titles):
            return self.tokenizer(titles, texts, **kwargs)
        return self.tokenizer(texts, **kwargs)

    def masks(self, input_ids: list[int]) -> tuple[list[int], list[int]]:
        """Encoder and decoder masked positions of one sequence (the decoder's contain the encoder's)."""
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids)
        groups = word_groups(tokens, [i in self.special_ids for i in input_ids])
        n = len(input_ids)
        enc = whole_word_mask(groups, n, self.encoder_mask_prob, self.rng)
        if self.decoder_mask_prob - self.encoder_mask_prob <= 1e-4:
            return enc, enc
        extra = whole_word_mask(
            groups, n, extra_mask_prob(self.encoder_mask_prob, self.decoder_mask_prob), self.rng
        )
        return enc, sorted(set(enc) | set(extra))

    def corrupt(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked positions -> [MASK] (or 80% [MASK] / 10% random id / 10% kept); labels at masked positions."""
        labels = torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE))
        out = input_ids.clone()
        if self.all_use_mask_token:
            out[mask] = self.tokenizer.mask_token_id
            return out, labels
        to_mask = mask & (torch.rand(mask.shape, generator=self.generator) < 0.8)
        out[to_mask] = self.tokenizer.mask_token_id
        to_random = mask & ~to_mask & (torch.rand(mask.shape, generator=self.generator) < 0.5)
        random_ids = torch.randint(self.vocab_size, mask.shape, generator=self.generator)
        out[to_random] = random_ids[to_random]
        return out, labels

    def pad(self, sequences: list[list[int]], value: int) -> torch.Tensor:
        """Right-pad to the longest sequence (rounded up to `pad_to_multiple_of`)."""
        width = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for i, s in enumerate(sequences):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out

    def __call__(self, items: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        features = self.tokenize([it["title"] for it in items], [it["text"] for it in items])
        ids = features["input_ids"]
        enc_masks, dec_masks = zip(*(self.masks(seq) for seq in ids))
        input_ids = self.pad(ids, self.tokenizer.pad_token_id)
        attention_mask = self.pad([[1] * len(seq) for seq in ids], 0)
        types = features.get("token_type_ids")
        token_type_ids = self.pad(types, 0) if types is not None else torch.zeros_like(input_ids)
        enc_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        dec_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (e, d) in enumerate(zip(enc_masks, dec_masks)):
            enc_mask[i, e] = True
            dec_mask[i, d] = True
        special = torch.isin(input_ids, torch.tensor(sorted(self.special_ids))) | (attention_mask == 0)
        enc_mask &= ~special
        dec_mask &= ~special
        labels = input_ids.masked_fill(special, IGNORE)
        enc_ids, enc_labels = self.corrupt(input_ids, enc_mask)
        if self.decoder_mask_prob - self.encoder_mask_prob <= 1e-4:
            dec_ids, dec_labels = enc_ids.clone(), enc_labels.clone()
        else:
            dec_ids, dec_labels = self.corrupt(input_ids, dec_mask)
        out = {}
        for side, ids, lab in (("enc", enc_ids, enc_labels), ("dec", dec_ids, dec_labels)):
            out[f"{side}_input_ids"] = ids
            out[f"{side}_attention_mask"] = attention_mask
            out[f"{side}_token_type_ids"] = token_type_ids
            out[f"{side}_labels"] = lab
        out["labels"] = labels
        return out


# ------------------------------------------------------------------------------------------ data


def split_rows(num_rows: int, num_eval: int, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """SimLM's split: shuffle 0..N-1 with `random.Random(seed)`; the first `num_eval` are held out.

    Returns `(train_rows, eval_rows)`.
    """
    if num_eval >= num_rows:
        raise ValueError(f"num_eval_samples={num_eval} leaves no training passage in a corpus of {num_rows}")
    rows = list(range(num_rows))
    random.Random(seed).shuffle(rows)
    order = np.asarray(rows, dtype=np.int64)
    return order[num_eval:], order[:num_eval]


class PassageDataset(Dataset):
    """Corpus rows -> `{title, text}`."""

    def __init__(self, corpus: Corpus, rows: np.ndarray) -> None:
        self.corpus = corpus
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, str]:
        p = self.corpus[int(self.rows[index])]
        return {"title": p.title, "text": p.text}


class RLMDataModule(CorpusDataModule):
    """Every passage of `data`'s corpus (title + text), split into training and held-out eval passages.

    `num_eval_samples` passages (SimLM: 4096) are held out with SimLM's `random.Random(split_seed)`
    shuffle; `max_train_samples` optionally truncates the rest.
    """

    def __init__(
        self,
        data: Any,
        model_name_or_path: str,
        max_length: int = 144,
        encoder_mask_prob: float = 0.3,
        decoder_mask_prob: float = 0.5,
        all_use_mask_token: bool = True,
        pad_to_multiple_of: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 64,
        num_eval_samples: int = 256,
        max_train_samples: int | None = None,
        split_seed: int = 123,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.data_cfg = data
        self.model_name_or_path = model_name_or_path
        self.collator_args = {
            "max_length": max_length,
            "encoder_mask_prob": encoder_mask_prob,
            "decoder_mask_prob": decoder_mask_prob,
            "all_use_mask_token": all_use_mask_token,
            "pad_to_multiple_of": pad_to_multiple_of,
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_eval_samples = num_eval_samples
        self.max_train_samples = max_train_samples
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.data: RetrievalData | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = RetrievalData.from_config(self.data_cfg)
        corpus = self.data.corpus
        self.tokenizer = load_tokenizer(self.model_name_or_path)
        self.collator = RLMCollator(self.tokenizer, **self.collator_args)
        train_rows, eval_rows = split_rows(len(corpus), self.num_eval_samples, self.split_seed)
        if self.max_train_samples:
            train_rows = train_rows[: self.max_train_samples]
        self.train_dataset = PassageDataset(corpus, train_rows)
        self.val_dataset = PassageDataset(corpus, eval_rows) if len(eval_rows) else None
        log.info("RLM passages: %d train, %d held out", len(train_rows), len(eval_rows))
