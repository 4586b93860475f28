"""Stage parameters are checked before a stage runs: a wrong type or range is one error naming the key."""

from __future__ import annotations

import pytest

from simlm.stages import run_stage
from simlm.stages.params import ParamError, check_stage_params
from tests.conftest import PROJECT_ROOT

STAGES = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "stage").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "trainer").glob("*.yaml"))
INFERENCE_STAGES = (
    "bm25",
    "encode",
    "index",
    "search",
    "rerank",
    "teacher_scores",
    "mine",
    "evaluate",
    "export",
)


def test_every_inference_stage_declares_its_parameters():
    import importlib

    from omegaconf import OmegaConf

    for name in INFERENCE_STAGES:
        entry = OmegaConf.load(PROJECT_ROOT / "conf" / "stage" / f"{name}.yaml").entry
        params = importlib.import_module(entry.rpartition(".")[0]).PARAMS
        assert params, name


def test_every_shipped_config_passes(compose):
    for stage in STAGES:
        check_stage_params(compose(f"stage={stage}"))
    for trainer in TRAINERS:
        check_stage_params(compose("stage=encode", f"trainer={trainer}"))
    for name in EXPERIMENTS:
        check_stage_params(compose(f"+experiment={name}"))


@pytest.mark.parametrize("pipeline", [(), ("stage=pipeline",), ("+experiment=scifact_pipeline",)])
def test_every_pipeline_step_config_passes(compose, pipeline):
    from simlm.stages.pipeline import STEPS, PipelineContext, step_config

    cfg = compose(*pipeline)
    ctx = PipelineContext(cfg, list(STEPS))
    for step in STEPS.values():
        check_stage_params(step_config(cfg, step, ctx))


BAD = [
    ("bm25", "stage.top_k=abc", "stage.top_k must be a positive integer, got 'abc'"),
    ("bm25", "stage.bm25.b=2", "stage.bm25.b must be a number from 0 to 1, got 2"),
    ("bm25", "stage.negatives.mining.depth=-5", "stage.negatives.mining.depth must be a positive integer"),
    ("encode", "stage.batch_size=0", "stage.batch_size must be a positive integer, got 0"),
    ("encode", "stage.dtype=bfloat16", "stage.dtype must be one of 'float16', 'float32', got 'bfloat16'"),
    ("encode", "trainer.devices=0", "trainer.devices must be a positive integer, -1 .*, got 0"),
    ("search", "stage.top_k=10.5", "stage.top_k must be a positive integer, got 10.5"),
    ("search", "stage.backend=annoy", "stage.backend must be one of 'faiss', 'torch', got 'annoy'"),
    ("search", "stage.split=[]", "stage.split must be a split name or a non-empty list"),
    ("search", "stage.tag='my run'", "stage.tag must be a non-empty string without spaces"),
    ("search", "stage.nprobe=0", "stage.nprobe must be a positive integer or null, got 0"),
    ("search", "stage.distribute=nodes", "stage.distribute must be one of 'auto', 'shards', 'queries'"),
    ("search", "stage.index_to_gpu=maybe", "stage.index_to_gpu must be 'auto', true or false, got 'maybe'"),
    ("search", "stage.index_params={k_factor:many}", "stage.index_params must be a mapping of faiss search"),
    ("index", "stage.train_size=0", "stage.train_size must be a positive integer or null, got 0"),
    ("index", "stage.factory=''", r"stage.factory must be a non-empty string, got ''"),
    ("rerank", "stage.depth=true", "stage.depth must be a positive integer, got True"),
    (
        "teacher_scores",
        "stage.num_negatives=-1",
        "stage.num_negatives must be a non-negative integer or null",
    ),
    ("mine", "stage.mining.num_negatives=many", "stage.mining.num_negatives must be a non-negative integer"),
    ("evaluate", "stage.run_file=null", r"stage.run_file must be a path \(a non-empty string\), got None"),
    ("export", "stage.task_lengths=maybe", "stage.task_lengths must be true or false, got 'maybe'"),
]


@pytest.mark.parametrize(("stage", "override", "message"), BAD, ids=[f"{s}:{o}" for s, o, _ in BAD])
def test_a_bad_parameter_fails_before_the_stage_runs(compose, tmp_path, stage, override, message):
    cfg = compose(f"stage={stage}", override)
    with pytest.raises(ParamError, match=message):
        run_stage(cfg)
    assert not (tmp_path / "run").exists()  # nothing written, not even the run dir's metrics


@pytest.mark.parametrize("devices", ["1", "4", "-1", "auto", "[0,1]", "'0,1'", "'2'", "'1,'"])
def test_devices_lightning_accepts_pass(compose, devices):
    check_stage_params(compose("stage=encode", f"trainer.devices={devices}"))


@pytest.mark.parametrize("devices", ["0", "-2", "[]", "'0'", "abc", "1.5", "true", "null"])
def test_devices_nothing_can_run_on_fail(compose, devices):
    with pytest.raises(ParamError, match="trainer.devices must be"):
        check_stage_params(compose("stage=encode", f"trainer.devices={devices}"))


def test_a_bad_step_parameter_fails_before_the_pipeline_runs_any_step(compose, tmp_path):
    work = tmp_path / "work"
    cfg = compose(f"stage.work_dir={work}", "++stage.step_overrides.rerank.stage.depth=abc")
    message = (
        r"pipeline step rerank: stage.depth must be a positive integer, got 'abc' "
        r"\(the step's stage.depth: set stage.step_overrides.rerank.stage.depth\)"
    )
    with pytest.raises(ParamError, match=message):
        run_stage(cfg)
    assert not work.exists()  # not even BM25 ran
