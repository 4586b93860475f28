"""Config groups and commands: one source per setting, documented overrides, names, `--help`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from simlm.config import find_scifact, scifact_path, warn_deprecated_options
from simlm.stages import run_stage
from simlm.stages.pipeline import config_hash
from tests.conftest import PROJECT_ROOT

STAGES = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "stage").glob("*.yaml"))


# ------------------------------------------------------------------ data=scifact: one lookup
def test_data_scifact_resolves_simlm_scifact(compose, monkeypatch, small_beir):
    monkeypatch.setenv("SIMLM_SCIFACT", str(small_beir))
    assert find_scifact() == small_beir.resolve()
    cfg = compose("stage=bm25", "data=scifact")
    assert cfg.data.root == str(small_beir.resolve())
    assert (cfg.data.layout, cfg.data.name, cfg.data.val_split, cfg.data.eval_split) == (
        "beir",
        "scifact",
        "holdout:100",  # no dev split: a held-out slice of the training queries validates
        "test",
    )
    for name in ("scifact_bm25", "scifact_biencoder", "scifact_pipeline", "scifact_rlm"):
        assert compose(f"+experiment={name}").data.root == str(small_beir.resolve())
    text = "".join(p.read_text() for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))
    assert "shared/data/scifact" not in text  # no recipe hard-codes where the data lives


def test_missing_scifact_says_how_to_get_it(compose, monkeypatch, tmp_path):
    monkeypatch.setenv("SIMLM_SCIFACT", str(tmp_path / "nowhere"))
    assert find_scifact() is None
    with pytest.raises(FileNotFoundError) as err:
        scifact_path()
    message = str(err.value)
    for hint in ("SIMLM_SCIFACT", str(tmp_path / "nowhere"), "data.root=", "data.name=scifact"):
        assert hint in message
    cfg = compose("stage=bm25", "data=scifact")  # composing is lazy; reading data.root fails clearly
    with pytest.raises(Exception, match="SIMLM_SCIFACT"):
        _ = cfg.data.root


# ------------------------------------------------------------------ model group
def test_minilm_is_described_as_trained_and_simlm_input_is_its_own_option(compose):
    native = compose("model=minilm").model
    assert (native.pooling, native.passage_format, native.p_max_len) == ("mean", "concat", 256)
    simlm_input = compose("model=minilm_simlm_input").model
    assert (simlm_input.pooling, simlm_input.passage_format) == ("cls", "pair")
    assert (simlm_input.q_max_len, simlm_input.p_max_len) == (32, 144)
    assert simlm_input.name_or_path == native.name_or_path
    assert compose().model == simlm_input  # the default (the demo main job's input)
    for name in ("scifact_biencoder", "scifact_pipeline"):  # recipes use the model group as it is
        assert compose(f"+experiment={name}", "data.root=x").model == native
        assert "\nmodel:" not in (PROJECT_ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()


# ------------------------------------------------------------------ model selection (SimLM's)
def test_msmarco_recipes_select_models_as_simlm_did(compose):
    assert compose("+experiment=msmarco_biencoder").stage.monitor is None  # the last epoch
    assert compose("+experiment=msmarco_kd_biencoder").stage.monitor == "val/inbatch_mrr"
    assert compose("+experiment=msmarco_reranker").stage.monitor == "val/group_acc"
    # the small-collection default: best on full validation retrieval (a documented departure)
    assert compose("stage=biencoder").stage.monitor == "val/ndcg@10"
    assert compose("stage=train_reranker").stage.monitor == "val/mrr@10"


# ------------------------------------------------------------------ one source per setting
def test_recipes_hold_only_what_differs_from_the_stage_defaults(compose):
    """No experiment (nor a pipeline step's block) repeats a value its stage config already holds."""
    from simlm.stages.pipeline import STEPS

    recipes = {p.stem: OmegaConf.load(p) for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml")}
    recipes["stage/demo_pipeline"] = OmegaConf.create(
        {"stage": OmegaConf.load(PROJECT_ROOT / "conf" / "stage" / "demo_pipeline.yaml")}
    )
    for name, recipe in sorted(recipes.items()):
        stage = recipe.get("stage") or OmegaConf.create({})
        if "step_overrides" in stage:  # each step's block against its own stage's defaults
            blocks = {
                step: block.get("stage") or OmegaConf.create({})
                for step, block in stage.step_overrides.items()
            }
            stages = {step: STEPS[step].stage for step in blocks}
        else:
            blocks, stages = {"": stage}, {"": compose(f"+experiment={name}").stage.name}
        # a value is repeated when it equals the default in every step that sets it (a shared block may
        # hold a value one of its steps needs)
        is_default: dict[tuple[str, str], list[bool]] = {}
        for step, block in blocks.items():
            defaults = compose(f"stage={stages[step]}").stage
            for key, value in _leaves(OmegaConf.to_container(block)):
                same = OmegaConf.select(defaults, key, default="<absent>") == value
                is_default.setdefault((key, repr(value)), []).append(same)
        repeated = [key for key, flags in is_default.items() if all(flags)]
        assert not repeated, (name, repeated)


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _leaves(value, path)
        else:
            yield path, value


def test_pipeline_steps_share_one_block(compose):
    # the BEIR recipe's KD step adds one key to the shared module block: kd_alpha 1.0 (chosen on validation)
    for cfg, kd_module_extra in (
        (compose(), {}),
        (compose("+experiment=scifact_pipeline", "data.root=x"), {"kd_alpha": 1.0}),
    ):
        steps = cfg.stage.step_overrides
        assert steps.retriever1 == steps.retriever2
        for key in ("monitor", "datamodule", "final_eval"):
            assert steps.kd_biencoder.stage[key] == steps.retriever1.stage[key], key
        kd_module = OmegaConf.to_container(steps.kd_biencoder.stage.module)
        assert kd_module == {**OmegaConf.to_container(steps.retriever1.stage.module), **kd_module_extra}
        assert steps.kd_biencoder.trainer == steps.retriever1.trainer
        assert steps.kd_biencoder.stage.train_n_passages != steps.retriever1.stage.train_n_passages


def test_the_teacher_scores_every_passage_of_a_kd_group(compose):
    # a group passage without a teacher score would be filled in unscored; each recipe sizes both together
    for cfg in (compose(), compose("+experiment=beir_pipeline", "data.root=x")):
        steps = cfg.stage.step_overrides
        assert steps.teacher_scores.stage.num_negatives + 1 == steps.kd_biencoder.stage.train_n_passages
        # and the queries it trains on: both take the first N of the same file
        scored = steps.teacher_scores.stage.get("max_examples")
        assert scored == steps.kd_biencoder.stage.datamodule.get("max_train_examples")


# ------------------------------------------------------------------ documented overrides
def test_documented_overrides_work_without_plus(compose):
    cfg = compose(
        "stage=biencoder",
        "trainer.max_steps=5",
        "stage.callbacks.retrieval_evaluation.enabled=false",
        "callbacks.model_checkpoint.enabled=false",
        "callbacks.lr_monitor.enabled=false",
    )
    assert cfg.trainer.max_steps == 5 and not cfg.stage.callbacks.retrieval_evaluation.enabled
    assert compose("stage=kd_biencoder", "stage.callbacks.retrieval_evaluation.enabled=false")


def test_declared_flags_and_the_rename_keep_the_pipeline_hashes(compose):
    """Declaring `trainer.max_steps: -1` and `enabled: true` and renaming stage=reranker changed no step's
    hash: complete pipeline steps stay complete."""
    for stage in ("biencoder", "train_reranker"):
        cfg = compose(f"stage={stage}")
        before = OmegaConf.to_container(cfg)  # today's config as it was composed before the declarations
        del before["trainer"]["max_steps"]
        for entry in before["callbacks"].values():
            del entry["enabled"]
        if stage == "biencoder":
            del before["stage"]["callbacks"]["retrieval_evaluation"]["enabled"]
        else:
            before["stage"]["name"] = "reranker"
        assert config_hash(cfg, "") == config_hash(OmegaConf.create(before), "")
        assert config_hash(compose(f"stage={stage}", "trainer.max_steps=7"), "") != config_hash(cfg, "")
    off = compose("stage=biencoder", "stage.callbacks.retrieval_evaluation.enabled=false")
    assert config_hash(off, "") != config_hash(compose("stage=biencoder"), "")


def test_debug_fdr_writes_no_checkpoints_or_logs(compose, tmp_path, small_beir, small_beir_bm25, tiny_bert):
    from tests.test_biencoder import biencoder_overrides

    out = tmp_path / "fdr"
    overrides = biencoder_overrides(small_beir, tiny_bert, small_beir_bm25 / "train.jsonl")
    cfg = compose(*[o for o in overrides if o != "logger=csv"], "debug=fdr", output_dir=out)
    run_stage(cfg)
    assert (out / "model").is_dir() and (out / "metrics.json").is_file()  # the stage still ran
    assert not list(out.rglob("*.ckpt")) and not (out / "checkpoints").exists()
    assert not (out / "csv").exists()


# ------------------------------------------------------------------ names
def test_train_reranker_is_the_stage_and_reranker_a_deprecated_alias(compose, caplog):
    new, old = compose("stage=train_reranker"), compose("stage=reranker")
    assert new == old and new.stage.name == "train_reranker"
    with caplog.at_level("WARNING", logger="simlm"):
        messages = warn_deprecated_options({"stage": "reranker", "data": "demo"})
    assert messages and "stage=train_reranker" in messages[0] and "stage=train_reranker" in caplog.text
    assert warn_deprecated_options({"stage": "train_reranker"}) == []


def test_help_lists_every_stage(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    listed = res.stdout.split("Stages (stage=<name>")[1]
    described = {
        line.split()[0] for line in listed.splitlines()[1:] if line.startswith("  ") and line[2] != " "
    }
    assert described == set(STAGES)
    assert "more arrive" not in res.stdout
    assert "Usage: .venv/bin/python run.py" in res.stdout


def test_no_config_cites_the_spec():
    """The spec is not part of the repository: configs cite the paper or the original scripts."""
    for path in (PROJECT_ROOT / "conf").rglob("*.yaml"):
        assert not re.search(r"\bspec\b", path.read_text()), path
