"""stage=export: sentence-transformers loads the folder and reproduces simlm's query and passage embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simlm.models.encoder import TextEncoder, load_tokenizer
from simlm.retrieval.encoding import encode_texts
from simlm.retrieval.store import load_shards
from simlm.stages import run_stage

QUERIES = ["open a file", "how do i parse a json document " * 6, "sort a list in place"]  # one > q_max_len
TITLES = ["os.open", "", "list.sort"]
TEXTS = [
    "Open the file and return a stream. " * 30,  # longer than p_max_len
    "Deserialize a JSON document to a Python object.",
    "Sort the list in ascending order and return None.",
]
PREFIXES = {"query_prefix": "query: ", "passage_prefix": "passage: "}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentence_transformer(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def export(compose, source, out, *extra):
    run_stage(
        compose(
            "stage=export", f"stage.source={source}", f"stage.out_dir={out}", *extra, output_dir=out.parent
        )
    )
    return out


def test_concat_model_matches_encode_for_queries_and_passages(compose, tmp_path, tiny_bert, small_beir):
    encoder = TextEncoder.from_pretrained(tiny_bert, pooling="cls", passage_format="concat", **PREFIXES)
    encoder.save_pretrained(tmp_path / "run" / "model", load_tokenizer(tiny_bert))
    out = export(compose, tmp_path / "run", tmp_path / "export" / "st")  # a run dir stands for its model/

    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "document": "passage: "}
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 144

    st = sentence_transformer(out)
    tok = load_tokenizer(tiny_bert)
    np.testing.assert_allclose(
        st.encode_query(QUERIES), encode_texts(encoder, tok, queries=QUERIES), atol=1e-5
    )
    docs = [f"{t} {x}" if t else x for t, x in zip(TITLES, TEXTS)]
    expected = encode_texts(encoder, tok, titles=TITLES, texts=TEXTS)
    np.testing.assert_allclose(st.encode_document(docs), expected, atol=1e-5)

    # stage=encode reads the exported folder too, and agrees with sentence-transformers on a corpus
    run_stage(
        compose(
            "stage=encode",
            "data=beir",
            f"data.root={small_beir}",
            f"model.name_or_path={out}",
            "stage.dtype=float32",
            output_dir=tmp_path / "enc",
        )
    )
    from simlm.data.dataset import RetrievalData

    rows, emb = next(load_shards(tmp_path / "enc" / "embeddings"))
    passages = list(RetrievalData(small_beir, layout="beir").corpus.passages(rows[:8].tolist()))
    st_docs = st.encode_document([f"{p.title} {p.text}" if p.title else p.text for p in passages])
    np.testing.assert_allclose(emb[:8], st_docs, atol=1e-5)


def test_pair_model_with_pooler_from_a_checkpoint(compose, tmp_path, tiny_bert):
    from simlm.modules.biencoder import BiEncoderModule

    settings = {"pooling": "mean", "l2_normalize": False, "add_pooler": True, "pooler_dim": 16, **PREFIXES}
    module = BiEncoderModule(str(tiny_bert), settings)
    torch.nn.init.normal_(module.encoder.pooler.weight)
    ckpt = tmp_path / "last.ckpt"  # what Lightning stores: state_dict + hyper_parameters
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    out = export(compose, ckpt, tmp_path / "export" / "st")

    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense"]  # no Normalize
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"

    st = sentence_transformer(out)
    encoder, tok = module.encoder, load_tokenizer(tiny_bert)
    np.testing.assert_allclose(
        st.encode_query(QUERIES), encode_texts(encoder, tok, queries=QUERIES), atol=1e-5
    )
    expected = encode_texts(encoder, tok, titles=TITLES, texts=TEXTS)
    # SimLM's "pair" passages: a (title, text) tuple per passage, ("", text) when untitled
    pairs = list(zip(TITLES, TEXTS))
    np.testing.assert_allclose(st.encode_document(pairs), expected, atol=1e-5)
    # the caveat: a "title text" string is another input ([CLS] title text [SEP], one segment)
    concat = st.encode_document([f"{t} {x}" if t else x for t, x in zip(TITLES, TEXTS)])
    assert not np.allclose(concat[0], expected[0], atol=1e-3)


def test_separate_encoders_are_refused(compose, tmp_path, tiny_bert):
    encoder = TextEncoder.from_pretrained(tiny_bert, share_encoder=False)
    encoder.save_pretrained(tmp_path / "model", load_tokenizer(tiny_bert))
    with pytest.raises(ValueError, match="separate query and passage encoders"):
        export(compose, tmp_path / "model", tmp_path / "export" / "st")
    assert not (tmp_path / "export" / "st" / "modules.json").exists()


@pytest.mark.parametrize("saved_settings", [False, True], ids=["model-group", "saved-settings"])
def test_export_of_a_folder_follows_encode_settings_precedence(
    compose, tmp_path, tiny_bert, saved_settings, caplog
):
    """A folder without simlm_retrieval.json takes the model group's settings (model.pooling=mean), as
    stage=encode does; a folder with one keeps its saved settings over the group's. The log says which."""
    import logging
    import shutil

    from simlm.models.encoder import SETTINGS_FILE, load_encoder

    folder = tmp_path / "plain-hf-folder"
    shutil.copytree(tiny_bert, folder)
    if saved_settings:
        saved = {"pooling": "mean", "passage_format": "concat", "l2_normalize": False, **PREFIXES}
        (folder / SETTINGS_FILE).write_text(json.dumps(saved))
        overrides = ("model.pooling=cls", "model.passage_format=pair")  # lose against the saved file
    else:
        assert not (folder / SETTINGS_FILE).exists()
        overrides = ("model.pooling=mean", "model.query_prefix='query: '", "model.passage_prefix='passage: '")
    with caplog.at_level(logging.INFO, logger="simlm"):
        out = export(compose, folder, tmp_path / "export" / "st", *overrides)
    expected_source = f"its saved {folder / SETTINGS_FILE}" if saved_settings else "the model config (no"
    assert any(
        "settings from" in r.getMessage() and expected_source in r.getMessage() for r in caplog.records
    )

    # what stage=encode would embed with: load_encoder on the same model group
    cfg = compose("stage=encode", f"model.name_or_path={folder}", *overrides, output_dir=tmp_path / "enc")
    encoder, tok = load_encoder(cfg.model)
    assert encoder.settings.pooling == "mean"
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert json.loads((out / SETTINGS_FILE).read_text())["pooling"] == "mean"

    st = sentence_transformer(out)
    np.testing.assert_allclose(
        st.encode_query(QUERIES), encode_texts(encoder, tok, queries=QUERIES), atol=1e-5
    )
    if encoder.settings.passage_format == "pair":  # SimLM's pair, `("", text)` when untitled
        docs = list(zip(TITLES, TEXTS))
    else:
        docs = [f"{t} {x}" if t else x for t, x in zip(TITLES, TEXTS)]
    expected = encode_texts(encoder, tok, titles=TITLES, texts=TEXTS)
    np.testing.assert_allclose(st.encode_document(docs), expected, atol=1e-5)
