"""TextEncoder: the tiny fixture model, pooling, separate encoders, the linear pooler, save -> load."""

from __future__ import annotations

import json

import pytest
import torch

from simlm.models.encoder import (
    RetrievalSettings,
    TextEncoder,
    load_tokenizer,
    pool,
    tokenize_passages,
    tokenize_queries,
)


def test_tiny_fixture_loads_through_from_pretrained(tiny_bert):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = tok("open a file", "pathlib docs")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["token_type_ids"][-1] == 1
    assert AutoModel.from_pretrained(tiny_bert).config.hidden_size == 32
    assert AutoModelForMaskedLM.from_pretrained(tiny_bert).config.num_hidden_layers == 2


def test_mean_and_cls_pooling_against_manual():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, mask, "mean")[0], (hidden[0, 0] + hidden[0, 1]) / 2)
    assert torch.allclose(pool(hidden, mask, "mean")[1], hidden[1].mean(0))


def test_passage_formats_and_prefixes(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    pair = tokenize_passages(tok, ["json"], ["encode objects"], RetrievalSettings(passage_prefix="passage: "))
    assert pair["token_type_ids"][0].max() == 1
    concat = tokenize_passages(tok, ["json"], ["encode objects"], RetrievalSettings(passage_format="concat"))
    assert concat["token_type_ids"][0].max() == 0
    q = tokenize_queries(tok, ["x " * 100], RetrievalSettings(q_max_len=16))
    assert q["input_ids"].shape[1] == 16
    with pytest.raises(ValueError):
        RetrievalSettings(pooling="max")


@pytest.mark.parametrize(
    "settings", [{"share_encoder": False}, {"add_pooler": True, "pooler_dim": 16, "pooling": "mean"}]
)
def test_save_load_round_trip(tiny_bert, tmp_path, settings):
    tok = load_tokenizer(tiny_bert)
    encoder = TextEncoder.from_pretrained(tiny_bert, **settings).eval()
    if not encoder.shared:  # make the two towers differ, as after training
        with torch.no_grad():
            for p in encoder.passage_model.parameters():
                p.add_(0.01)
    out = encoder.save_pretrained(tmp_path / "model", tok)
    if not settings.get("share_encoder", True):
        assert (out / "query_model" / "config.json").is_file() and (
            out / "passage_model" / "config.json"
        ).is_file()
    saved = json.loads((out / "simlm_retrieval.json").read_text())
    assert {k: saved[k] for k in settings} == settings
    loaded = TextEncoder.from_pretrained(out).eval()
    batch = tokenize_passages(tok, ["t"], ["some passage text"], encoder.settings)
    q = tokenize_queries(tok, ["a query"], encoder.settings)
    with torch.no_grad():
        for is_query, b in ((True, q), (False, batch)):
            torch.testing.assert_close(loaded.encode(dict(b), is_query), encoder.encode(dict(b), is_query))
        if not encoder.shared:
            assert not torch.allclose(encoder.encode(dict(batch), True), encoder.encode(dict(batch), False))
    assert loaded.encode(dict(q), True).shape[-1] == settings.get("pooler_dim", 32)


def test_empty_title_is_still_a_pair(tiny_bert):
    """SimLM's bi-encoder always tokenises (title, contents): an empty title gives `[CLS] [SEP] text [SEP]`."""
    tok = load_tokenizer(tiny_bert)
    text_ids = tok("encode objects", add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    pair = tokenize_passages(tok, [""], ["encode objects"], RetrievalSettings(), pad=False)
    assert pair["input_ids"][0] == [cls, sep, *text_ids, sep]
    assert pair["token_type_ids"][0] == [0, 0] + [1] * (len(text_ids) + 1)
    # the same tokens whether the untitled passage is batched with titled ones or not
    mixed = tokenize_passages(tok, ["json", ""], ["x y", "encode objects"], RetrievalSettings(), pad=False)
    assert mixed["input_ids"][1] == pair["input_ids"][0]
    padded = tokenize_passages(tok, ["json", ""], ["x y", "encode objects"], RetrievalSettings())
    n = len(pair["input_ids"][0])
    assert padded["input_ids"][1, :n].tolist() == pair["input_ids"][0]
    # concat keeps the text alone
    concat = tokenize_passages(
        tok, [""], ["encode objects"], RetrievalSettings(passage_format="concat"), pad=False
    )
    assert concat["input_ids"][0] == [cls, *text_ids, sep]
