"""Precision chosen for the hardware (`trainer.precision=auto`) and fp32 master weights for every model."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from omegaconf import OmegaConf

import simlm.runtime as runtime
from simlm.models.cross_encoder import load_reranker_model
from simlm.models.encoder import TextEncoder, load_tokenizer, tokenize_passages, tokenize_queries


@pytest.fixture(params=[True, False], ids=["native-bf16-cpu", "avx2-only-cpu"])
def cpu_bf16(request, monkeypatch):
    """Both CPU kinds, whatever this machine is: the detection is replaced, the choice is real."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: request.param)
    monkeypatch.setattr(runtime, "_LOGGED", set())
    return request.param


def test_auto_picks_bf16_only_on_cpus_with_native_bf16(cpu_bf16):
    assert runtime.resolve_precision("auto", "cpu") == ("bf16-mixed" if cpu_bf16 else "32-true")
    assert runtime.resolve_precision("auto", "cuda") == "16-mixed"


def test_explicit_precision_always_wins(cpu_bf16):
    assert runtime.resolve_precision("32-true", "cpu") == "32-true"
    assert runtime.resolve_precision("bf16", "cpu") == "bf16-mixed"
    with pytest.raises(ValueError, match="unknown precision"):
        runtime.resolve_precision("fp16", "cpu")


def test_the_choice_is_logged_once_with_its_reason(cpu_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="simlm.runtime"):
        for _ in range(3):
            runtime.resolve_precision("auto", "cpu")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    expected = "bf16-mixed (CPU has native bf16)" if cpu_bf16 else "32-true (CPU has no native bf16"
    assert len(lines) == 1 and lines[0].startswith(f"precision: {expected}")


def test_inference_runtime_and_training_trainer_follow_auto(cpu_bf16, compose, tiny_bert):
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "auto"}})
    assert runtime.Runtime.from_config(cfg).precision == ("bf16-mixed" if cpu_bf16 else "32-true")

    from simlm.stages.train import build_trainer

    trainer_cfg = compose("stage=biencoder", f"model.name_or_path={tiny_bert}", "trainer.precision=auto")
    trainer = build_trainer(trainer_cfg, [])
    assert trainer.precision == ("bf16-mixed" if cpu_bf16 else "32-true")


def test_detection_agrees_with_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("SIMLM_CPU_BF16", raising=False)  # the suite pins 0 (conftest): detect for real
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")  # pragma: no cover
    assert runtime.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.fixture(scope="module")
def fp16_checkpoint(tmp_path_factory, tiny_bert):
    """The tiny BERT saved in float16, as SimLM's released checkpoints are."""
    from transformers import AutoModel, AutoModelForMaskedLM

    out = tmp_path_factory.mktemp("fp16-bert")
    AutoModelForMaskedLM.from_pretrained(str(tiny_bert)).half().save_pretrained(out)
    load_tokenizer(tiny_bert).save_pretrained(out)
    assert next(AutoModel.from_pretrained(str(out)).parameters()).dtype == torch.float16  # the trap
    return out


def test_every_model_loads_an_fp16_checkpoint_in_float32(fp16_checkpoint):
    from simlm.models.rlm import load_mlm

    encoder = TextEncoder.from_pretrained(fp16_checkpoint)
    for model in (encoder, load_reranker_model(str(fp16_checkpoint)), load_mlm(fp16_checkpoint)):
        assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_one_training_step_from_an_fp16_checkpoint_is_finite_and_stays_fp32(fp16_checkpoint):
    from simlm.losses import contrastive_loss

    torch.manual_seed(0)
    encoder = TextEncoder.from_pretrained(fp16_checkpoint)
    encoder.train()
    tokenizer = load_tokenizer(fp16_checkpoint)
    queries = tokenize_queries(tokenizer, ["what is a heap", "sort a list"], encoder.settings)
    passages = tokenize_passages(
        tokenizer,
        ["heapq", "x", "sorted", "y"],
        ["a heap queue", "other", "sort items", "misc"],
        encoder.settings,
    )
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    for _ in range(2):
        loss, _ = contrastive_loss(
            encoder.encode(dict(queries), True), encoder.encode(dict(passages), False), 2, 0.02
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in encoder.parameters())


# ----------------------------------------------------------------------------- attention dropout
def _attention_dropouts(module: torch.nn.Module) -> set[float]:
    return {float(m.config.attention_probs_dropout_prob) for m in module.modules() if hasattr(m, "config")}


def test_attention_dropout_is_a_model_setting_that_defaults_to_the_checkpoints(tiny_bert):
    assert _attention_dropouts(TextEncoder.from_pretrained(tiny_bert)) == {0.1}  # BERT's default
    assert _attention_dropouts(TextEncoder.from_pretrained(tiny_bert, attention_dropout=0.0)) == {0.0}
    with pytest.raises(ValueError, match="model.attention_dropout must be in"):
        TextEncoder.from_pretrained(tiny_bert, attention_dropout=1.5)


@pytest.mark.parametrize("stage", ["biencoder", "kd_biencoder", "train_reranker", "rlm"])
def test_every_training_stage_applies_model_attention_dropout(stage, compose, tiny_bert):
    from hydra.utils import instantiate

    extra = ["stage.module.generator.name_or_path=null", "stage.module.generator.freeze=false"]
    base = [f"stage={stage}", f"model.name_or_path={tiny_bert}", *(extra if stage == "rlm" else [])]
    for value, expected in (("null", 0.1), ("0", 0.0)):
        module = instantiate(compose(*base, f"model.attention_dropout={value}").stage.module, _convert_="all")
        trained = {"rlm": "encoder", "train_reranker": "model"}.get(stage, "encoder")
        assert _attention_dropouts(getattr(module, trained)) == {expected}


@pytest.mark.parametrize(("forced", "expected"), [("1", True), ("0", False)])
def test_detection_can_be_forced(monkeypatch, forced, expected):
    monkeypatch.setenv("SIMLM_CPU_BF16", forced)
    assert runtime.cpu_has_native_bf16() is expected
    monkeypatch.setenv("SIMLM_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="SIMLM_CPU_BF16"):
        runtime.cpu_has_native_bf16()


@pytest.mark.parametrize("group", ["cpu", "gpu", "ddp"])
def test_auto_is_the_default_of_the_trainer_groups(compose, group):
    assert compose(f"trainer={group}").trainer.precision == "auto"


@pytest.mark.parametrize(("forced", "expected"), [("1", "bf16-mixed"), ("0", "32-true")])
def test_a_training_stage_and_its_evaluation_run_the_chosen_path(
    forced, expected, monkeypatch, caplog, compose, tmp_path, small_beir, small_beir_bm25, tiny_bert
):
    """Both CPU paths end to end at the default `trainer.precision`: the choice is logged and used."""
    from simlm.stages import run_stage
    from tests.test_biencoder import biencoder_overrides

    monkeypatch.setenv("SIMLM_CPU_BF16", forced)
    monkeypatch.setattr(runtime, "_LOGGED", set())
    import simlm.retrieval.encoding as encoding

    used = []
    monkeypatch.setattr(encoding, "autocast", lambda p, d: used.append(p) or runtime.autocast(p, d))
    cfg = compose(
        *biencoder_overrides(small_beir, tiny_bert, small_beir_bm25 / "train.jsonl"),
        "trainer.max_epochs=1",
        "stage.datamodule.max_train_examples=16",
        output_dir=tmp_path,
    )
    assert cfg.trainer.precision == "auto"
    with caplog.at_level(logging.INFO, logger="simlm.runtime"):
        run_stage(cfg)
    assert f"precision: {expected}" in caplog.text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["ndcg@10"]) and math.isfinite(metrics["val"]["ndcg@10"])
    assert used and set(used) == {expected}  # the evaluation's encoding ran at the same precision
