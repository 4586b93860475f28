"""Optional int8 dynamic quantisation for the inference stages (`stage.quantize=int8`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simlm.models.encoder import load_encoder
from simlm.models.quantize import quantize
from simlm.retrieval.encoding import encode_texts
from simlm.stages import run_stage


def _quantized_linears(model: torch.nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in model.modules())


def test_quantize_replaces_every_linear_and_keeps_the_vectors_close(tiny_bert):
    encoder, tokenizer = load_encoder({"name_or_path": str(tiny_bert), "pooling": "mean"})
    assert quantize(encoder, None) is encoder
    int8 = quantize(encoder, "int8")
    linears = sum(isinstance(m, torch.nn.Linear) for m in encoder.modules())
    assert linears > 0 and _quantized_linears(int8) == linears and _quantized_linears(encoder) == 0
    texts = ["a heap queue", "sort the items of a list", "open a file for reading", "parse JSON text"]
    full = encode_texts(encoder, tokenizer, titles=[""] * 4, texts=texts)
    low = encode_texts(int8, tokenizer, titles=[""] * 4, texts=texts)
    cosine = np.sum(full * low, axis=1) / np.linalg.norm(full, axis=1) / np.linalg.norm(low, axis=1)
    assert cosine.min() > 0.99


def test_quantize_rejects_unknown_modes(tiny_bert):
    encoder, _ = load_encoder({"name_or_path": str(tiny_bert)})
    with pytest.raises(ValueError, match="stage.quantize must be null or 'int8'"):
        quantize(encoder, "int4")


def test_encode_and_search_stages_run_quantized(compose, tmp_path, small_beir, tiny_bert):
    common = ("data=beir", f"data.root={small_beir}", f"model.name_or_path={tiny_bert}", "model.pooling=mean")
    enc = compose("stage=encode", *common, "stage.quantize=int8", output_dir=tmp_path / "enc")
    run_stage(enc)
    run_stage(
        compose(
            "stage=search",
            *common,
            "stage.quantize=int8",
            f"stage.embeddings_dir={enc.stage.out_dir}",
            output_dir=tmp_path / "search",
        )
    )
    metrics = json.loads((tmp_path / "search" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
