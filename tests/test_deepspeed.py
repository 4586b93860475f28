"""DeepSpeed: the trainer configs, the CPU-capable strategy, and ZeRO-2 training of the bi-encoder on 2 CPU
processes through run.py, its checkpoint directories turned into a Hugging Face folder that stage=encode loads."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from simlm.stages import run_stage
from tests.conftest import PROJECT_ROOT


def test_trainer_configs_carry_simlm_ds_config(compose):
    zero2 = compose("trainer=deepspeed").trainer
    zero_opt = zero2.strategy.config.zero_optimization
    assert zero2.strategy._target_ == "simlm.strategies.deepspeed_strategy"
    assert zero_opt.stage == 2 and zero_opt.overlap_comm and zero_opt.reduce_scatter
    assert zero_opt.contiguous_gradients and zero_opt.allgather_partitions
    assert zero_opt.allgather_bucket_size == zero_opt.reduce_bucket_size == 200_000_000
    assert zero2.gradient_clip_val == 1.0 and zero2.strategy.initial_scale_power == 12
    zero3 = compose("trainer=deepspeed_zero3").trainer.strategy.config
    assert zero3.zero_optimization.stage == 3
    offload = compose("trainer=deepspeed_offload").trainer.strategy.config
    assert offload.zero_optimization.offload_optimizer.device == "cpu"
    assert offload.zero_force_ds_cpu_optimizer is False


def test_strategy_and_precision_follow_the_device(compose, monkeypatch):
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import DeepSpeedStrategy

    from simlm.strategies import CPUDeepSpeedStrategy, deepspeed_strategy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose("trainer=deepspeed", "trainer.devices=1")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, CPUDeepSpeedStrategy)
    assert trainer.precision == "32-true"  # fp32 on CPU, whatever trainer.precision says
    assert isinstance(trainer.strategy.config, dict)  # a plain dict, as DeepSpeed needs
    assert os.environ["DS_ACCELERATOR"] == "cpu"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = instantiate(compose("trainer=deepspeed").trainer.strategy)
    assert type(gpu) is DeepSpeedStrategy and gpu.precision_plugin.precision == "16-mixed"
    gpu._format_config()  # what Lightning adds at setup: SimLM's fp16 dynamic loss scaling
    assert gpu.config["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 12,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }
    cpu = deepspeed_strategy({}, device_type="cpu", precision="bf16-mixed")
    assert type(cpu) is CPUDeepSpeedStrategy and cpu.precision_plugin.precision == "bf16-mixed"


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("pooling", "passage_format"),
    [
        ("cls", "pair"),  # SimLM's settings
        pytest.param("mean", "concat", marks=pytest.mark.slow),  # sentence-transformers' usual ones
    ],
)
def test_zero2_two_cpu_processes_train_save_and_encode(
    pooling, passage_format, compose, tiny_bert, small_beir, small_beir_bm25, tmp_path, cache_dir
):
    from simlm.checkpoints import checkpoint_state_dict, is_deepspeed_checkpoint
    from simlm.models.encoder import TextEncoder, load_tokenizer
    from simlm.optim import warmup_decay_factor
    from simlm.retrieval.encoding import encode_texts
    from simlm.retrieval.store import load_shards

    out = tmp_path / "ds"
    lr, warmup = 1e-3, 5
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        "stage=biencoder",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        f"stage.datamodule.train_file={small_beir_bm25 / 'train.jsonl'}",
        "trainer=deepspeed",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "stage.train_n_passages=4",
        "stage.datamodule.batch_size=4",
        f"stage.module.lr={lr}",
        f"stage.module.warmup_steps={warmup}",
        "stage.final_eval.enabled=false",
        f"model.pooling={pooling}",
        f"model.passage_format={passage_format}",
        "logger=csv",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "SIMLM_CACHE": str(cache_dir), "DS_ACCELERATOR": "cpu"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]

    # ZeRO-2 checkpoints are directories written with SimLM's settings
    best = out / "checkpoints" / "epoch_000.ckpt"
    assert is_deepspeed_checkpoint(best) and is_deepspeed_checkpoint(out / "checkpoints" / "last.ckpt")
    states = torch.load(best / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=False)
    assert states["global_step"] == 150 // 8  # 2 ranks x 4 queries per step, in step
    ds_config = states["ds_config"]
    assert ds_config["zero_optimization"]["stage"] == 2 and ds_config["gradient_clipping"] == 1.0
    assert len(list((best / "checkpoint").glob("*optim_states.pt"))) == 2  # one optimizer shard per rank

    # the module's own AdamW + log-warmup LambdaLR ran under DeepSpeed: logged lr follows the schedule
    (metrics_csv,) = out.glob("csv/version_*/metrics.csv")
    with open(metrics_csv) as f:
        lrs = [(int(r["step"]), float(v)) for r in csv.DictReader(f) for k, v in r.items() if "lr" in k and v]
    assert len(lrs) >= 10
    total = 150 // 8
    for step, value in lrs:
        assert value == pytest.approx(
            lr * warmup_decay_factor(step, warmup, total, "log"), rel=1e-6, abs=1e-12
        )

    # the saved folder holds the consolidated (zero_to_fp32) weights of the best checkpoint, trained
    model_dir = out / "model"
    encoder = TextEncoder.from_pretrained(model_dir)
    consolidated = checkpoint_state_dict(best)
    for name, tensor in encoder.query_model.state_dict().items():
        torch.testing.assert_close(tensor, consolidated[f"encoder.query_model.{name}"], msg=name)
    initial = TextEncoder.from_pretrained(tiny_bert).query_model.state_dict()
    key = "embeddings.word_embeddings.weight"
    assert not torch.equal(initial[key], encoder.query_model.state_dict()[key])

    # stage=encode loads it and embeds the corpus as encode_texts does
    enc_out = tmp_path / "enc"
    run_stage(
        compose(
            "stage=encode",
            "data=beir",
            f"data.root={small_beir}",
            f"model.name_or_path={model_dir}",
            "stage.dtype=float32",
            output_dir=enc_out,
        )
    )
    from simlm.data.dataset import RetrievalData

    passages = list(RetrievalData(small_beir, layout="beir").corpus.passages(range(5)))
    expected = encode_texts(
        encoder,
        load_tokenizer(model_dir),
        titles=[p.title for p in passages],
        texts=[p.text for p in passages],
    )
    rows, emb = next(load_shards(enc_out / "embeddings"))
    np.testing.assert_allclose(emb[np.argsort(rows)][:5], expected, atol=1e-5)
    assert json.loads((out / "metrics.json").read_text())["val"]["ndcg@10"] >= 0.0

    # stage=export consolidates a DeepSpeed checkpoint directory (its hyper-parameters name the model)
    from sentence_transformers import SentenceTransformer

    exported = tmp_path / "export" / "st"
    source = out / "checkpoints" / "last.ckpt"
    run_stage(
        compose(
            "stage=export", f"stage.source={source}", f"stage.out_dir={exported}", output_dir=exported.parent
        )
    )
    st = SentenceTransformer(str(exported), device="cpu")
    queries = [p.title for p in passages]
    tok = load_tokenizer(model_dir)
    np.testing.assert_allclose(
        st.encode_query(queries), encode_texts(encoder, tok, queries=queries), atol=1e-5
    )
    if passage_format == "pair":
        docs = [(p.title, p.text) if p.title else p.text for p in passages]
    else:
        docs = [f"{p.title} {p.text}" if p.title else p.text for p in passages]
    np.testing.assert_allclose(st.encode_document(docs), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("trainer", "extra"),
    [
        # ZeRO-3 gathers parameters collectively: the retrieval evaluation encodes on every rank in lockstep
        ("deepspeed_zero3", []),
        ("deepspeed_offload", []),
    ],
)
def test_zero3_and_offload_train_and_save_consolidated_weights(
    trainer, extra, tiny_bert, small_beir, small_beir_bm25, tmp_path, cache_dir
):
    from simlm.checkpoints import checkpoint_state_dict
    from simlm.models.encoder import TextEncoder

    out = tmp_path / trainer
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        "stage=biencoder",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        f"stage.datamodule.train_file={small_beir_bm25 / 'train.jsonl'}",
        f"trainer={trainer}",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "stage.train_n_passages=4",
        "stage.datamodule.batch_size=4",
        "stage.module.lr=1e-3",
        *extra,
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "SIMLM_CACHE": str(cache_dir), "DS_ACCELERATOR": "cpu"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "test" in json.loads((out / "metrics.json").read_text())  # final eval on the consolidated model
    encoder = TextEncoder.from_pretrained(out / "model")
    consolidated = checkpoint_state_dict(out / "checkpoints" / "last.ckpt")
    initial = TextEncoder.from_pretrained(tiny_bert).query_model.state_dict()
    for name, tensor in encoder.query_model.state_dict().items():
        torch.testing.assert_close(tensor, consolidated[f"encoder.query_model.{name}"], msg=name)
        assert not torch.equal(tensor, initial[name]), name
