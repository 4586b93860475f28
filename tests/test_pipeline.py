"""`stage=pipeline`: chained stages, results table, skip-when-complete, redo after a kill or a change."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from simlm.data.formats import read_run
from simlm.stages import run_stage
from simlm.stages.params import ParamError
from simlm.stages.pipeline import config_hash
from tests.conftest import PROJECT_ROOT

TRAIN = ("trainer.max_epochs=1", "+trainer.limit_train_batches=4")
ALL_STEPS = [
    "bm25",
    "zeroshot",
    "retriever1",
    "retriever2",
    "reranker",
    "rerank",
    "teacher_scores",
    "kd_biencoder",
]
TABLE_ROWS = ALL_STEPS  # every step has a row (its time), those with metrics their val and test metrics
RETRIEVAL_ROWS = ["bm25", "zeroshot", "retriever1", "retriever2", "rerank", "kd_biencoder"]


def pipeline_overrides(small_beir, tiny_bert, work_dir, steps="[bm25,retriever1,retriever2]", *extra):
    return (
        "stage=pipeline",
        "data=beir",
        f"data.root={small_beir}",
        "data.name=small",
        f"model.name_or_path={tiny_bert}",
        f"stage.steps={steps}",
        f"stage.work_dir={work_dir}",
        *TRAIN,
        "++stage.step_overrides.retriever1.stage.train_n_passages=4",
        "++stage.step_overrides.retriever2.stage.train_n_passages=4",
        "++stage.step_overrides.bm25.stage.negatives.mining.num_negatives=30",
        *extra,
    )


def markers(work_dir: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in work_dir.glob("*/.complete.json")}


def test_pipeline_chains_stages_and_skips_complete_ones(compose, tmp_path, small_beir, tiny_bert):
    work = tmp_path / "work"
    run_stage(compose(*pipeline_overrides(small_beir, tiny_bert, work)))
    assert set(markers(work)) == {"bm25", "retriever1", "retriever2"}
    # wiring: retriever2 trained on retriever1's mined negatives
    r2 = (work / "retriever2" / "config.yaml").read_text()
    assert str(work / "retriever1" / "mined" / "train.jsonl") in r2
    results = json.loads((work / "results.json").read_text())
    assert [r["step"] for r in results["rows"]] == ["bm25", "retriever1", "retriever2"]
    for row in results["rows"]:  # the table is what the stages wrote
        step_metrics = json.loads((work / row["step"] / "metrics.json").read_text())["test"]
        assert row["ndcg@10"] == pytest.approx(step_metrics["ndcg@10"])
    assert "| BM25 |" in (work / "results.md").read_text()
    assert (work / "results.png").stat().st_size > 1000

    before = markers(work)
    run_stage(compose(*pipeline_overrides(small_beir, tiny_bert, work), output_dir=tmp_path / "again"))
    assert markers(work) == before  # nothing re-ran
    assert (tmp_path / "again" / "results.md").read_text() == (work / "results.md").read_text()

    # a changed step reruns it and everything after it, not what came before
    changed = pipeline_overrides(
        small_beir,
        tiny_bert,
        work,
        "[bm25,retriever1,retriever2]",
        "++stage.step_overrides.retriever1.stage.module.lr=1e-3",
    )
    run_stage(compose(*changed, output_dir=tmp_path / "changed"))
    after = markers(work)
    assert after["bm25"] == before["bm25"]
    assert all(after[s] != before[s] for s in ("retriever1", "retriever2"))


def test_step_hash_ignores_where_outputs_and_caches_live_but_not_what_is_computed(compose, tmp_path):
    base = compose("stage=bm25")
    digest = config_hash(base, "")
    moved = compose("stage=bm25", f"paths.cache_dir={tmp_path / 'other-cache'}", output_dir=tmp_path / "o")
    assert moved.data.cache_dir != base.data.cache_dir
    assert config_hash(moved, "") == digest
    assert config_hash(compose("stage=bm25", "stage.top_k=7"), "") != digest
    assert config_hash(compose("stage=bm25", "data.name=other"), "") != digest
    assert config_hash(base, "an earlier step changed") != digest


@pytest.mark.timeout(900)
def test_pipeline_resumes_after_being_killed_mid_stage(tmp_path, small_beir, tiny_bert, cache_dir):
    work = tmp_path / "work"
    overrides = pipeline_overrides(small_beir, tiny_bert, work, "[bm25,retriever1]")
    cmd = [sys.executable, str(PROJECT_ROOT / "run.py"), *overrides]
    cmd += [f"hydra.run.dir={tmp_path / 'run'}", "++stage.step_overrides.retriever1.trainer.max_epochs=50"]
    cmd.remove("+trainer.limit_train_batches=4")
    env = {**os.environ, "SIMLM_CACHE": str(cache_dir)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 600
        # kill it once retriever1 has saved a checkpoint: mid-stage
        while not list((work / "retriever1" / "checkpoints").glob("*.ckpt")) and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert set(markers(work)) == {"bm25"}
    bm25_marker = markers(work)["bm25"]

    cmd = [c for c in cmd if "max_epochs=50" not in c] + ["+trainer.limit_train_batches=4"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert markers(work)["bm25"] == bm25_marker  # not redone
    assert set(markers(work)) == {"bm25", "retriever1"}
    assert "Retriever 1" in (work / "results.md").read_text()


def test_the_main_job_is_the_demo_pipeline_with_cpu_budgets(compose):
    """`python run.py` with no arguments: every step on the demo data, with the small demo budgets;
    `stage=pipeline` keeps SimLM's own stage settings (only BM25's train depth is set)."""
    main = compose()
    assert main.stage.name == "pipeline" and main.data.name == "demo"
    assert list(main.stage.steps) == ALL_STEPS
    budgets = main.stage.step_overrides
    for step in ("retriever1", "retriever2", "kd_biencoder"):
        assert budgets[step].stage.datamodule.max_train_examples <= 512
    assert budgets.reranker.stage.module.head_lr > budgets.reranker.stage.module.lr  # a fresh head
    # the re-rank step's fourth score: MiniLM as it was trained, not the zero-shot step's SimLM input
    assert main.stage.fusion_model.pooling == "mean" and main.model.pooling == "cls"
    assert main.stage.fusion_model.name_or_path == main.model.name_or_path
    full = compose("stage=pipeline")
    assert set(full.stage.step_overrides) == {"bm25"}


def small_demo(small_beir: Path, tiny_bert: Path, work: Path) -> list[str]:
    """The main job's overrides for the small BEIR fixture and the tiny model, outputs under `work`."""
    return [
        "data=beir",
        f"data.root={small_beir}",
        "data.name=small",
        f"model.name_or_path={tiny_bert}",
        f"stage.fusion_model.name_or_path={tiny_bert}",
        f"stage.work_dir={work}",
    ]


def test_the_demo_budgets_run_every_step_with_a_tiny_model(compose, tmp_path, small_beir, tiny_bert):
    """The main job's config end to end (2 training steps per stage, tiny model, small data)."""
    work = tmp_path / "work"
    cfg = compose(
        *small_demo(small_beir, tiny_bert, work),
        "++trainer.limit_train_batches=2",  # epochs end, so the re-ranker's validation runs
        "++trainer.limit_val_batches=2",
        output_dir=tmp_path / "run",
    )
    run_stage(cfg)
    results = json.loads((work / "results.json").read_text())
    assert (results["split"], results["val_split"]) == ("test", "dev")
    rows = {r["step"]: r for r in results["rows"]}
    assert list(rows) == TABLE_ROWS
    assert (work / "teacher_scores" / "kd_train.jsonl").is_file()
    kd = OmegaConf.load(work / "kd_biencoder" / "config.yaml")  # the step ran with the demo budget
    assert kd.model.p_max_len == 64 and kd.stage.train_n_passages == 4
    assert kd.model.name_or_path == str(work / "retriever2" / "model")  # the demo's student starts there
    assert kd.stage.callbacks.retrieval_evaluation.enabled is False
    # validation next to test on every retrieval row, each the step's own run of the dev split
    for step in RETRIEVAL_ROWS:
        metrics = json.loads((work / step / "metrics.json").read_text())
        assert rows[step]["val"]["ndcg@10"] == pytest.approx(metrics["dev"]["ndcg@10"]), step
        assert rows[step]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"]), step
        assert (work / step / "dev.trec").is_file()
    # every row that builds on another step's run is compared with it, per split, on the same queries
    builds_on = {"retriever1": "zeroshot", "retriever2": "retriever1", "rerank": "retriever2"}
    builds_on["kd_biencoder"] = "retriever2"  # the demo's student starts from Retriever 2
    assert {step for step, row in rows.items() if "vs" in row} == set(builds_on)
    for step, base in builds_on.items():
        vs = rows[step]["vs"]
        assert (vs["step"], vs["metric"]) == (base, "ndcg@10")
        for split, mine, theirs in (
            ("dev", rows[step]["val"], rows[base]["val"]),
            ("test", rows[step], rows[base]),
        ):
            assert vs[split]["difference"] == pytest.approx(mine["ndcg@10"] - theirs["ndcg@10"], abs=1e-12)
            assert 0 < vs[split]["p_value"] <= 1 and vs[split]["ci_low"] <= vs[split]["ci_high"]
    assert "vs retriever2: " in (work / "results.md").read_text()
    assert rows["reranker"]["val"] == {} and "ndcg@10" not in rows["reranker"]  # no test metrics: trains only
    # the re-rank step re-ranks Retriever 2's runs, its weight chosen on dev, never below Retriever 2 there
    reranker = OmegaConf.load(work / "reranker" / "config.yaml")
    assert reranker.model.name_or_path == str(work / "retriever2" / "model")  # the demo starts it there
    rerank = OmegaConf.load(work / "rerank" / "config.yaml").stage
    assert rerank.run_file == str(work / "retriever2" / "test.trec")
    assert rerank.val_run_file == str(work / "retriever2" / "dev.trec")
    chosen = json.loads((work / "rerank" / "metrics.json").read_text())["interpolation"]
    # (w, b, e): the re-ranker's w in 0..1, BM25's b and the second bi-encoder's e in 0..0.5, sum <= 1
    tenths = [(w, b, e) for w in range(11) for b in range(6) for e in range(6) if w + b + e <= 10]
    assert chosen["validation_split"] == "dev" and len(chosen["grid"]) == len(tenths) == 216
    assert (
        chosen["fusion_model"]["name_or_path"] == str(tiny_bert)
        and chosen["fusion_model"]["pooling"] == "mean"
    )
    w, b, e = chosen["weight"], chosen["bm25_weight"], chosen["fusion_weight"]
    assert rows["rerank"]["weight"] == w
    assert f"w = {w:.1f}, BM25 b = {b:.1f}, fusion e = {e:.1f} on dev" in rows["rerank"]["system"]
    assert rows["rerank"]["val"]["ndcg@10"] >= rows["retriever2"]["val"]["ndcg@10"]
    if w == b == e == 0.0:
        assert read_run(work / "rerank" / "test.trec") == read_run(work / "retriever2" / "test.trec")
    # the KD teacher is that validated blend
    teacher = OmegaConf.load(work / "teacher_scores" / "config.yaml").stage
    assert teacher.interpolation_from == str(work / "rerank" / "metrics.json")
    blend = json.loads((work / "teacher_scores" / "metrics.json").read_text())["teacher_scores"]
    assert (blend.get("weight", 1.0), blend.get("bm25_weight", 0.0), blend.get("fusion_weight", 0.0)) == (
        w,
        b,
        e,
    )
    table = (work / "results.md").read_text()
    assert table.startswith("| step | dev ndcg@10 | dev mrr@10 | dev recall@100 | test ndcg@10 |")
    assert not re.search(r"\| \d+\.\d+ \|$", table, re.MULTILINE)  # seconds print whole


def test_the_demo_pipeline_pre_trains_offline_when_rlm_is_a_step(compose, tmp_path, small_beir, tiny_bert):
    """`stage.steps=[rlm, ...]` on the main job: RLM (or its MLM control) with a generator trained
    jointly (no hub download), and Retriever 1 starts from its encoder."""
    control = compose(
        "stage.steps=[rlm,bm25,retriever1]", "+stage.step_overrides.rlm.stage.module.objective=mlm"
    )
    assert control.stage.step_overrides.rlm.stage.module.objective == "mlm"
    work = tmp_path / "work"
    cfg = compose(
        *small_demo(small_beir, tiny_bert, work),
        "model.pooling=cls",
        "stage.steps=[rlm,bm25,retriever1]",
        "stage.step_overrides.rlm.trainer.max_steps=2",
        "stage.step_overrides.rlm.trainer.val_check_interval=2",
        "++stage.step_overrides.rlm.stage.datamodule.num_eval_samples=16",
        "++trainer.limit_train_batches=2",
        output_dir=tmp_path / "run",
    )
    run_stage(cfg)
    rlm = OmegaConf.load(work / "rlm" / "config.yaml")
    assert rlm.stage.module.generator.name_or_path is None and rlm.stage.module.generator.freeze is False
    assert rlm.stage.datamodule.max_length == 64 and rlm.model.pooling == "cls"
    retriever1 = OmegaConf.load(work / "retriever1" / "config.yaml")
    assert retriever1.model.name_or_path == str(work / "rlm" / "model") and retriever1.model.pooling == "cls"
    rows = {r["step"]: r for r in json.loads((work / "results.json").read_text())["rows"]}
    assert "ndcg@10" in rows["retriever1"] and "ndcg@10" in rows["retriever1"]["val"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_main_job_runs_and_its_dense_stages_beat_zero_shot(tmp_path, cache_dir):
    """`python run.py` exactly as a user runs it (MiniLM, demo data, CPU): the table prints, and every
    fine-tuned bi-encoder beats the zero-shot model it started from."""
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "run.py"),
        f"stage.work_dir={work}",
        f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "SIMLM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SimLM pipeline on demo (validation split dev, test split test)" in res.stdout
    rows = {r["step"]: r for r in json.loads((work / "results.json").read_text())["rows"]}
    assert list(rows) == TABLE_ROWS
    for step in ("retriever1", "retriever2", "kd_biencoder"):
        assert rows[step]["ndcg@10"] > rows["zeroshot"]["ndcg@10"], (step, rows)
    # re-ranking never lowers the run it re-ranks: by construction on validation, and on test
    for split in ("val", "test"):
        pick = (lambda r: r["val"]) if split == "val" else (lambda r: r)
        assert pick(rows["rerank"])["ndcg@10"] >= pick(rows["retriever2"])["ndcg@10"], (split, rows)


def test_validation_wiring_and_the_re_ranker_init(compose, tmp_path):
    """Config only: the zero-shot search covers the validation split, the re-ranker validates on (and
    stage=rerank chooses its weight with) the negatives step's validation run; `stage.reranker_model`
    may name an earlier step."""
    from simlm.stages.pipeline import STEPS, PipelineContext, step_config

    work = tmp_path / "work"
    cfg = compose("stage=pipeline", f"stage.work_dir={work}", "data=scifact", "data.root=/nowhere")
    ctx = PipelineContext(cfg, ALL_STEPS)
    assert ctx.val_split == "holdout"
    zeroshot = step_config(cfg, STEPS["zeroshot"], ctx)
    assert list(zeroshot.stage.split) == ["holdout", "test"]
    reranker = step_config(cfg, STEPS["reranker"], ctx)
    assert reranker.stage.datamodule.val_run_file == str(work / "retriever2" / "holdout.trec")
    assert step_config(cfg, STEPS["rerank"], ctx).stage.val_run_file == str(
        work / "retriever2" / "holdout.trec"
    )
    assert reranker.model.name_or_path == cfg.model.name_or_path  # the default: the pipeline's model
    demo = compose(f"stage.work_dir={work}")  # the main job starts its cross-encoder from Retriever 2
    demo_reranker = step_config(demo, STEPS["reranker"], PipelineContext(demo, ALL_STEPS))
    assert demo_reranker.model.name_or_path == str(work / "retriever2" / "model")

    init = compose(f"stage.work_dir={work}", "stage.reranker_model=retriever2")
    assert PipelineContext(init, ALL_STEPS).reranker_model == str(work / "retriever2" / "model")
    with pytest.raises(ValueError, match=r"stage.reranker_model=retriever2 .* not in stage.steps"):
        _ = PipelineContext(init, ["bm25", "retriever1", "reranker"]).reranker_model
    # the KD student starts from the pre-trained encoder (SimLM), or from an earlier step's model
    kd = STEPS["kd_biencoder"]
    assert step_config(cfg, kd, ctx).model.name_or_path == cfg.model.name_or_path
    student = compose("stage=pipeline", f"stage.work_dir={work}", "stage.student_model=retriever2")
    kd_cfg = step_config(student, kd, PipelineContext(student, ALL_STEPS))
    assert kd_cfg.model.name_or_path == str(work / "retriever2" / "model")
    with pytest.raises(ValueError, match=r"stage.student_model=retriever2 starts the KD student .* not in"):
        _ = PipelineContext(student, ["bm25", "retriever1", "kd_biencoder"]).student_model
    none = compose(f"stage.work_dir={work}", "data.val_split=null")
    assert step_config(none, STEPS["rerank"], PipelineContext(none, ALL_STEPS)).stage.val_run_file is None
    # the KD teacher: the re-ranker's logits (SimLM), or the interpolation the rerank step validated
    teacher = STEPS["teacher_scores"]
    plain = compose("stage=pipeline", f"stage.work_dir={work}")
    assert step_config(plain, teacher, PipelineContext(plain, ALL_STEPS)).stage.interpolation_from is None
    blend = compose("stage=pipeline", f"stage.work_dir={work}", "stage.teacher=rerank")
    blend_cfg = step_config(blend, teacher, PipelineContext(blend, ALL_STEPS))
    assert blend_cfg.stage.interpolation_from == str(work / "rerank" / "metrics.json")
    with pytest.raises(ValueError, match=r"stage.teacher=rerank .* rerank is not in stage.steps"):
        step_config(
            blend, teacher, PipelineContext(blend, ["bm25", "retriever1", "reranker", "teacher_scores"])
        )
    typo = compose("stage=pipeline", f"stage.work_dir={work}", "stage.teacher=ensemble")
    with pytest.raises(ValueError, match=r"stage.teacher must be 'reranker' or 'rerank', got 'ensemble'"):
        step_config(typo, teacher, PipelineContext(typo, ALL_STEPS))


def test_the_rerank_steps_second_bi_encoder_is_wired_from_stage_fusion_model(compose, tmp_path):
    """Config only: `stage.fusion_model=zeroshot` gives the rerank step the zero-shot step's model config
    (init model and settings) with a validated weight; a step name gives its trained model; a step
    override of the weight wins; null adds nothing."""
    from simlm.stages.params import check_stage_params
    from simlm.stages.pipeline import STEPS, PipelineContext, step_config

    work = tmp_path / "work"
    rerank = STEPS["rerank"]

    def rerank_stage(*extra):
        cfg = compose("stage=pipeline", f"stage.work_dir={work}", *extra)
        sub = step_config(cfg, rerank, PipelineContext(cfg, ALL_STEPS))
        check_stage_params(sub)
        return cfg, sub.stage

    cfg, stage = rerank_stage("stage.fusion_model=zeroshot", "model.p_max_len=128")
    zeroshot = step_config(cfg, STEPS["zeroshot"], PipelineContext(cfg, ALL_STEPS)).model
    assert stage.fusion_weight == "validate"
    settings = ("pooling", "l2_normalize", "q_max_len", "p_max_len", "passage_format")
    assert OmegaConf.to_container(stage.fusion_model) == {
        "name_or_path": zeroshot.name_or_path,
        **{k: zeroshot[k] for k in settings},
        "query_prefix": "",
        "passage_prefix": "",
    }
    assert stage.fusion_model.p_max_len == 128 and zeroshot.name_or_path == cfg.model.name_or_path
    _, stage = rerank_stage("stage.fusion_model=retriever1")
    assert stage.fusion_model == str(work / "retriever1" / "model")
    _, stage = rerank_stage(
        "stage.fusion_model=retriever1", "++stage.step_overrides.rerank.stage.fusion_weight=0.2"
    )
    assert stage.fusion_weight == 0.2
    _, stage = rerank_stage()
    assert stage.fusion_model is None and stage.fusion_weight == 0


def _epochs_trained(step_dir: Path) -> int:
    """Epochs a training step ran, from its CSV log (epoch column of the rows it logged)."""
    import csv

    (log_file,) = step_dir.glob("csv/**/metrics.csv")
    with log_file.open() as f:
        return 1 + max(int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch"))


def run_beir_recipe(compose, tmp_path: Path, small_beir, tiny_bert, *extra: str) -> None:
    """`+experiment=beir_pipeline` on the small collection with the tiny model, 2 batches per epoch, into
    `<tmp_path>/work`."""
    cfg = compose(
        "+experiment=beir_pipeline",
        f"data.root={small_beir}",
        "data.name=small",
        f"model.name_or_path={tiny_bert}",
        f"stage.work_dir={tmp_path / 'work'}",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=2",
        *extra,
        output_dir=tmp_path / "run",
    )
    run_stage(cfg)


def test_the_beir_recipe_sizes_its_budgets_and_cross_fits_its_teachers(
    compose, tmp_path, small_beir, tiny_bert
):
    """`+experiment=beir_pipeline data.root=...` end to end (tiny model, 2 batches per epoch): the
    validation split resolved once, epochs from the collection's size, two fold re-rankers, and a teacher
    file in which no query is scored by a re-ranker that trained on it."""
    from simlm.data.folds import fold_of, read_trained_queries
    from simlm.data.formats import read_examples

    work = tmp_path / "work"
    # a re-ranker weight above 0, so the teacher uses the fold re-rankers (at w = 0 they are skipped:
    # test_fold_re_rankers_a_w_0_teacher_does_not_use_are_skipped); BM25's weight is still validated
    run_beir_recipe(
        compose, tmp_path, small_beir, tiny_bert, "++stage.step_overrides.rerank.stage.interpolation=0.5"
    )
    results = json.loads((work / "results.json").read_text())
    assert results["val_split"] == "dev"  # small_beir has a dev split: `dev|holdout:0.1` takes it
    folds = ["reranker_fold0", "reranker_fold1"]
    assert [r["step"] for r in results["rows"]] == [*ALL_STEPS[:6], *folds, *ALL_STEPS[6:]]
    assert OmegaConf.load(work / "retriever1" / "config.yaml").data.val_split == "dev"
    # 150 training queries: 4 bi-encoder steps per epoch -> Retriever 1/2 5 epochs and the KD step 3 (their
    # max_epochs); the re-ranker 18 per epoch -> 3 epochs (capped), and so its folds
    assert _epochs_trained(work / "retriever1") == 5 and _epochs_trained(work / "kd_biencoder") == 3
    assert _epochs_trained(work / "reranker") == 3 and _epochs_trained(work / "reranker_fold1") == 3
    teacher = OmegaConf.load(work / "teacher_scores" / "config.yaml").stage
    assert list(teacher.cross_fit_models) == [str(work / f / "model") for f in folds]
    records = [read_trained_queries(work / f / "model") for f in folds]
    for i, record in enumerate(records):
        assert record["excluded_fold"] == i and record["folds"] == 2
        assert record["query_ids"] and all(fold_of(q, 2) != i for q in record["query_ids"])
    scored = read_examples(work / "teacher_scores" / "kd_train.jsonl")
    assert scored and all(ex.query_id not in records[fold_of(ex.query_id, 2)]["query_ids"] for ex in scored)
    kd = OmegaConf.load(work / "kd_biencoder" / "config.yaml").stage
    assert kd.module.grad_cache == {"query_chunk": 32, "passage_chunk": 64}  # 4 chunks of its 256
    assert kd.train_n_passages == 8 and teacher.num_negatives == 7  # every passage of a group scored
    rerank = OmegaConf.load(work / "rerank" / "config.yaml")
    assert rerank.model.name_or_path == str(work / "reranker" / "model")  # trained on every query
    # BM25 a validated third score; the cross-fitted teachers' logits blended with the weights chosen there
    assert rerank.stage.bm25_weight == "validate"
    assert teacher.interpolation_from == str(work / "rerank" / "metrics.json")


def test_fold_re_rankers_a_w_0_teacher_does_not_use_are_skipped(compose, tmp_path, small_beir, tiny_bert):
    """The beir recipe with the re-ranker's weight fixed at 0 (BM25's still validated): the rerank step
    records the re-ranker's scale on the validation queries, the fold re-rankers do not train, the
    teacher blends BM25 and Retriever 2 on that scale without loading a re-ranker, and KD runs; turning
    `stage.skip_unused_teachers` off trains the folds on the next run (and redoes nothing else)."""

    def pipeline(*extra: str):
        run_beir_recipe(
            compose,
            tmp_path,
            small_beir,
            tiny_bert,
            "++stage.step_overrides.rerank.stage.interpolation=0",
            *extra,
        )

    work = tmp_path / "work"
    folds = ["reranker_fold0", "reranker_fold1"]
    pipeline()
    rerank = json.loads((work / "rerank" / "metrics.json").read_text())
    assert rerank["interpolation"]["weight"] == 0.0 and rerank["rerank"]["reranker_sd"] > 0
    for fold in folds:
        marker = json.loads((work / fold / ".complete.json").read_text())
        assert "w = 0" in marker["skipped"] and not (work / fold / "model").exists()
    rows = [r["step"] for r in json.loads((work / "results.json").read_text())["rows"]]
    assert rows == ALL_STEPS  # no row for a step that did not run
    stats = json.loads((work / "teacher_scores" / "metrics.json").read_text())["teacher_scores"]
    assert stats["teachers"] == 0 and stats["weight"] == 0.0
    assert (work / "kd_biencoder" / "model").is_dir()
    kd_marker = (work / "kd_biencoder" / ".complete.json").read_text()
    pipeline("stage.skip_unused_teachers=false")
    assert all((work / fold / "model").is_dir() for fold in folds)
    # the teacher does not depend on the folds at w = 0: teacher scores and KD are not redone
    stats = json.loads((work / "teacher_scores" / "metrics.json").read_text())["teacher_scores"]
    assert stats["teachers"] == 0
    assert (work / "kd_biencoder" / ".complete.json").read_text() == kd_marker


def test_the_scifact_recipe_is_the_beir_recipe_with_scifact_data(compose):
    beir = compose("+experiment=beir_pipeline", "data.root=/nowhere")
    scifact = compose("+experiment=scifact_pipeline")
    assert scifact.data.name == "scifact" and scifact.data.val_split == "holdout:100"
    assert beir.data.val_split == "dev|holdout:0.1"
    assert OmegaConf.to_container(scifact.stage) == OmegaConf.to_container(beir.stage)
    assert scifact.model == beir.model


@pytest.mark.parametrize(
    "student, expected",
    [("null", "zeroshot"), ("rlm", "zeroshot"), ("retriever1", "retriever1"), ("/some/folder", None)],
)
def test_each_row_is_compared_with_the_step_it_builds_on(compose, student, expected):
    from simlm.stages.pipeline import PipelineContext, input_step

    cfg = compose("stage=pipeline", f"stage.student_model={student}")
    ctx = PipelineContext(cfg, ["bm25", "zeroshot", "retriever1", "rerank", "kd_biencoder"])
    assert input_step("kd_biencoder", ctx) == expected
    assert (
        input_step("rerank", ctx) == "retriever1"
    )  # no retriever2 step: the re-rank takes Retriever 1's run
    assert (input_step("retriever1", ctx), input_step("bm25", ctx), input_step("zeroshot", ctx)) == (
        "zeroshot",
        None,
        None,
    )


def test_a_teacher_scoring_fewer_negatives_than_the_kd_groups_is_refused(compose, tmp_path):
    cfg = compose(
        "stage.step_overrides.kd_biencoder.stage.train_n_passages=16",  # the main job's teacher scores 3
        f"stage.work_dir={tmp_path / 'work'}",
    )
    with pytest.raises(
        ParamError, match=r"teacher scores 3 negatives .* groups of 16 passages .*num_negatives=15"
    ):
        run_stage(cfg)
    assert not (tmp_path / "work").exists()  # refused before the first step
