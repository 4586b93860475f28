"""A model that is neither a folder nor a hub id, or a hub id while offline: one clear error, at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from simlm.models.cross_encoder import load_reranker
from simlm.models.encoder import load_encoder
from simlm.models.hub import ModelSourceError, check_model_source
from simlm.models.rlm import GeneratorSettings, build_generator, load_mlm
from tests.conftest import PROJECT_ROOT

NOT_CACHED_HUB_ID = "simlm-test-org/no-such-model"


@pytest.mark.parametrize("missing", ["/nonexistent/simlm/model", "runs/no-such-run/model"])
def test_a_missing_folder_is_named_for_every_loader(missing):
    message = f"model.name_or_path '{missing}' is neither a folder nor a Hugging Face hub id"
    for load in (lambda: load_encoder({"name_or_path": missing}), lambda: load_reranker(missing)):
        with pytest.raises(ModelSourceError, match=message):
            load()
    with pytest.raises(ModelSourceError, match=message):
        load_mlm(missing)  # the RLM encoder
    # the RLM generator keeps its offline hint and names its own key
    with pytest.raises(OSError, match=f"stage.module.generator.name_or_path '{missing}' is neither") as info:
        build_generator(GeneratorSettings(name_or_path=missing), encoder_config=None)
    assert "generator.name_or_path=null" in str(info.value)


def test_a_relative_path_says_where_it_was_looked_for_and_a_file_is_no_folder(tmp_path):
    with pytest.raises(ModelSourceError, match=f"relative paths are read from {os.getcwd()}"):
        check_model_source("runs/no-such-run/model")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelSourceError, match="is a file, not a model folder"):
        check_model_source(weights, "stage.model")


def test_a_hub_id_while_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    for load in (
        lambda: load_encoder({"name_or_path": NOT_CACHED_HUB_ID}),
        lambda: load_reranker(NOT_CACHED_HUB_ID, key="stage.model"),
        lambda: load_mlm(NOT_CACHED_HUB_ID),
    ):
        with pytest.raises(ModelSourceError, match="not in the local cache while offline") as info:
            load()
        assert "SIMLM_ONLINE=1" in str(info.value) and NOT_CACHED_HUB_ID in str(info.value)
    assert time.perf_counter() - started < 5  # no retry loop
    check_model_source(PROJECT_ROOT)  # a folder is always fine


@pytest.mark.parametrize(
    ("stage", "override", "key"),
    [
        ("encode", "model.name_or_path=/no/encoder", "model.name_or_path '/no/encoder'"),
        ("search", "model.name_or_path=/no/encoder", "model.name_or_path '/no/encoder'"),
        ("rerank", "stage.model=/no/reranker", "stage.model '/no/reranker'"),
        ("teacher_scores", "stage.model=/no/reranker", "stage.model '/no/reranker'"),
    ],
)
def test_stages_name_the_key_that_holds_the_model_before_reading_data(
    compose, tmp_path, stage, override, key
):
    from simlm.stages import run_stage

    # data.root does not exist either: the model is checked first (a large corpus takes minutes to read)
    extra = ("stage.run_file=run.trec",) if stage == "rerank" else ()
    cfg = compose(f"stage={stage}", "data=beir", f"data.root={tmp_path / 'no-data'}", override, *extra)
    with pytest.raises(ModelSourceError, match=f"{key} is neither a folder nor a Hugging Face hub id"):
        run_stage(cfg)


def test_run_py_runs_offline_unless_the_user_opts_in(tmp_path, small_beir):
    """Without HF_HUB_OFFLINE in the environment run.py sets it: a hub id fails at once, saying why."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "SIMLM_ONLINE")}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        "stage=search",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={NOT_CACHED_HUB_ID}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"'{NOT_CACHED_HUB_ID}' is not a folder" in out and "while offline (HF_HUB_OFFLINE=1" in out
