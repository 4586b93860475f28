"""`stage=pipeline`: SimLM's stages chained (the paper's fine-tuning pipeline, Figure 2), each feeding the next through config.

[rlm ->] bm25 -> zero-shot -> retriever1 (BM25 negatives, mines) -> retriever2 (mined negatives, mines)
-> reranker (retriever2's negatives) -> rerank (retriever2's run) [-> reranker_fold0..K-1, cross-fitted
teachers, skipped when the blended teacher gives them w = 0] -> teacher_scores -> kd_biencoder.

Every step is a normal stage run composed from `conf/run.yaml` (`stage=<its stage>`) with the
pipeline's own `data`, `model`, `trainer` and `logger`, written into `<work_dir>/<step>/`. A finished
step leaves `.complete.json` holding the hash of its config and of every step before it; running the
pipeline again skips steps whose hash matches and redoes (from scratch) an interrupted or changed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from simlm.data.io import atomic_write, write_json
from simlm.data.validation import parse_val_split
from simlm.models.encoder import MODEL_SETTING_KEYS
from simlm.stages import Metrics
from simlm.stages.common import unused_reranker_scale

log = logging.getLogger(__name__)

MARKER = ".complete.json"


@dataclass(frozen=True)
class Step:
    """One pipeline step: the stage it runs and how its inputs come from earlier steps' outputs."""

    name: str
    stage: str
    wiring: Callable[[PipelineContext], list[str]]
    label: str  # row label in the results table
    # config values the wiring cannot write as a dotlist (mappings), merged after it
    settings: Callable[[PipelineContext], dict[str, Any]] = lambda ctx: {}


class PipelineContext:
    """What the wiring functions need: the work dir, the steps that run, and the models to start from."""

    def __init__(self, cfg: DictConfig, steps: list[str]) -> None:
        self.cfg = cfg
        self.work_dir = Path(cfg.stage.work_dir)
        self.steps = steps

    def out(self, step: str) -> Path:
        return self.work_dir / step

    @property
    def init_model(self) -> str:
        """SimLM initialises every bi-encoder from the pre-trained encoder (rlm's output when it runs)."""
        if "rlm" in self.steps:
            return str(self.out("rlm") / "model")
        return str(self.cfg.stage.init_model or self.cfg.model.name_or_path)

    def _step_or_model(self, key: str, starts: str, default: str) -> str:
        """`stage.<key>`: a folder or hub id, or the name of an earlier step (INIT_STEPS) whose model
        starts `starts`; null: `default`."""
        value = self.cfg.stage.get(key)
        if value in INIT_STEPS:
            if value not in self.steps:
                raise ValueError(
                    f"stage.{key}={value} starts the {starts} from that step's model, but it is "
                    f"not in stage.steps={self.steps}"
                )
            return str(self.out(value) / "model")
        return str(value or default)

    @property
    def reranker_model(self) -> str:
        """`stage.reranker_model`: where the cross-encoder starts (e.g. `retriever2`); default
        `model.name_or_path`."""
        return self._step_or_model("reranker_model", "re-ranker", str(self.cfg.model.name_or_path))

    @property
    def student_model(self) -> str:
        """`stage.student_model`: where the KD retriever starts (e.g. `retriever2`); default
        `init_model`, as SimLM (the pre-trained encoder)."""
        return self._step_or_model("student_model", "KD student", self.init_model)

    @property
    def fusion_model(self) -> Any:
        """`stage.fusion_model`: the second bi-encoder the rerank step may weigh in (null: none).

        `zeroshot`: the zero-shot step's model config (the init model with the pipeline's model settings);
        a step of INIT_STEPS: its trained model; else a folder, hub id or model config mapping as given.
        """
        value = self.cfg.stage.get("fusion_model")
        if value is None:
            return None
        if value == "zeroshot":
            model = step_config(self.cfg, STEPS["zeroshot"], self).model
            keys = ("name_or_path", *MODEL_SETTING_KEYS)
            return {k: model[k] for k in keys if model.get(k) is not None}
        if isinstance(value, str):
            return self._step_or_model("fusion_model", "rerank step's fusion bi-encoder", value)
        return OmegaConf.to_container(value, resolve=True)

    @property
    def cross_fit_folds(self) -> int:
        """`stage.cross_fit_folds`: K re-rankers trained on K folds score the teacher file (0: off)."""
        return int(self.cfg.stage.get("cross_fit_folds") or 0)

    @property
    def teacher_steps(self) -> list[str]:
        """The re-ranker steps whose models score the KD teacher file."""
        if self.cross_fit_folds:
            return [fold_step_name(i) for i in range(self.cross_fit_folds)]
        return ["reranker"]

    @property
    def teacher_blend(self) -> bool:
        """`stage.teacher=rerank`: the teacher is the rerank step's validated interpolation, not the logits."""
        teacher = str(self.cfg.stage.get("teacher") or "reranker")
        if teacher not in ("reranker", "rerank"):
            raise ValueError(f"stage.teacher must be 'reranker' or 'rerank', got {teacher!r}")
        if teacher == "rerank" and "rerank" not in self.steps:
            raise ValueError(
                f"stage.teacher=rerank blends the scores the rerank step validated, but rerank is not in "
                f"stage.steps={self.steps}"
            )
        return teacher == "rerank"

    @property
    def negatives_step(self) -> str:
        """The retriever whose mined negatives feed the re-ranker and the distillation."""
        return "retriever2" if "retriever2" in self.steps else "retriever1"

    @property
    def eval_split(self) -> str:
        split = self.cfg.data.eval_split
        return split if isinstance(split, str) else list(split)[0]

    @property
    def val_split(self) -> str | None:
        """The validation split's name (`dev`, `holdout`; `data.val_split`), None without validation."""
        spec = parse_val_split(self.cfg.data.get("val_split"))
        return None if spec is None else spec.name


def _val_run_override(ctx: PipelineContext, key: str) -> list[str]:
    """`key=<negatives step>/<val split>.trec`: the validation run of the run that gets re-ranked."""
    if ctx.val_split is None:
        return []
    return [f"{key}={ctx.out(ctx.negatives_step) / (ctx.val_split + '.trec')}"]


def _search_splits(ctx: PipelineContext) -> list[str]:
    """The zero-shot search covers the validation split too (one pass over the corpus)."""
    if ctx.val_split is None or ctx.val_split == ctx.eval_split:
        return []
    return [f"stage.split=[{ctx.val_split},{ctx.eval_split}]"]


# steps whose model may start the re-ranker or the KD student (stage.reranker_model / student_model=<step>)
INIT_STEPS = ("rlm", "retriever1", "retriever2")


def _fusion_settings(ctx: PipelineContext) -> dict[str, Any]:
    """The rerank step's fourth score: `stage.fusion_model`'s, its weight validated (a step override wins)."""
    model = ctx.fusion_model
    return {} if model is None else {"stage": {"fusion_model": model, "fusion_weight": "validate"}}


def _mined(ctx: PipelineContext) -> Path:
    return ctx.out(ctx.negatives_step) / "mined" / "train.jsonl"


FOLD_PREFIX = "reranker_fold"


def fold_step_name(fold: int) -> str:
    return f"{FOLD_PREFIX}{fold}"


def _teacher_wiring(ctx: PipelineContext) -> list[str]:
    """The teacher: the re-ranker, or (cross-fitting) the K fold re-rankers, each scoring the queries it
    never trained on (stage=teacher_scores checks their records)."""
    models = [str(ctx.out(name) / "model") for name in ctx.teacher_steps]
    wiring = [f"stage.examples_file={_mined(ctx)}"]
    if ctx.teacher_blend:
        wiring.append(f"stage.interpolation_from={ctx.out('rerank') / 'metrics.json'}")
    if len(models) == 1:
        return [f"model.name_or_path={models[0]}", *wiring]
    return [f"model.name_or_path={models[0]}", f"stage.cross_fit_models=[{','.join(models)}]", *wiring]


def fold_step(fold: int, folds: int) -> Step:
    """Cross-fitting's i-th re-ranker: the `reranker` step's recipe without the queries of fold i."""
    reranker = STEPS["reranker"]
    return Step(
        fold_step_name(fold),
        reranker.stage,
        lambda ctx: [
            *reranker.wiring(ctx),
            f"stage.datamodule.train_fold={{folds: {folds}, exclude: {fold}}}",
        ],
        f"re-ranker without fold {fold} (cross-fitted teacher)",
    )


STEPS: dict[str, Step] = {
    step.name: step
    for step in [
        Step("rlm", "rlm", lambda ctx: [], "RLM pre-training"),
        Step("bm25", "bm25", lambda ctx: [], "BM25"),
        Step(
            "zeroshot",
            "search",
            lambda ctx: [f"model.name_or_path={ctx.init_model}", *_search_splits(ctx)],
            "zero-shot init model",
        ),
        Step(
            "retriever1",
            "biencoder",
            lambda ctx: [
                f"model.name_or_path={ctx.init_model}",
                f"stage.datamodule.train_file={ctx.out('bm25') / 'train.jsonl'}",
                "stage.callbacks.negative_mining.enabled=true",
            ],
            "Retriever 1 (BM25 negatives)",
        ),
        Step(
            "retriever2",
            "biencoder",
            lambda ctx: [
                f"model.name_or_path={ctx.init_model}",
                f"stage.datamodule.train_file={ctx.out('retriever1') / 'mined' / 'train.jsonl'}",
                "stage.callbacks.negative_mining.enabled=true",
            ],
            "Retriever 2 (mined negatives)",
        ),
        Step(
            "reranker",
            "train_reranker",
            lambda ctx: [
                f"model.name_or_path={ctx.reranker_model}",
                f"stage.datamodule.train_file={_mined(ctx)}",
                *_val_run_override(ctx, "stage.datamodule.val_run_file"),
            ],
            "cross-encoder re-ranker (training; val: its score alone, w = 1)",
        ),
        Step(
            "rerank",
            "rerank",
            lambda ctx: [
                f"model.name_or_path={ctx.out('reranker') / 'model'}",
                f"stage.run_file={ctx.out(ctx.negatives_step) / (ctx.eval_split + '.trec')}",
                *_val_run_override(ctx, "stage.val_run_file"),
            ],
            "re-ranked retriever run",
            _fusion_settings,
        ),
        Step("teacher_scores", "teacher_scores", _teacher_wiring, "teacher scores"),
        Step(
            "kd_biencoder",
            "kd_biencoder",
            lambda ctx: [
                f"model.name_or_path={ctx.student_model}",
                f"stage.datamodule.train_file={ctx.out('teacher_scores') / 'kd_train.jsonl'}",
            ],
            "Retriever distill (KD)",
        ),
    ]
}


def step_config(cfg: DictConfig, step: Step, ctx: PipelineContext) -> DictConfig:
    """Compose `conf/run.yaml` for `step`: its stage, the pipeline's data/model/trainer/logger, its wiring
    and the user's `stage.step_overrides.<step>` (a config subtree merged last)."""
    choices = _group_choices(cfg)
    overrides = [f"stage={step.stage}"] + [f"{g}={c}" for g, c in choices.items() if g != "stage"]
    sub = _compose(overrides)
    with open_dict(sub):
        for group in ("data", "model", "trainer", "logger", "paths", "callbacks"):
            if group in cfg:
                sub[group] = cfg[group]
        sub.seed = cfg.seed
        sub.paths.output_dir = str(ctx.out(step.name))
        sub.merge_with(OmegaConf.from_dotlist(step.wiring(ctx)))
        sub.merge_with(step.settings(ctx))
        if step.name.startswith(FOLD_PREFIX):  # a fold re-ranker is the re-ranker's recipe on fewer queries
            sub.merge_with(cfg.stage.step_overrides.get("reranker") or {})
        sub.merge_with(cfg.stage.step_overrides.get(step.name) or {})
        if "wandb" in (sub.get("logger") or {}):
            sub.logger.wandb.group = f"pipeline-{cfg.data.name}"
            sub.logger.wandb.name = step.name
    return sub


def _compose(overrides: list[str]) -> DictConfig:
    """Compose `run.yaml` inside the running Hydra app, or from the project's `conf/` when called directly."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="run", overrides=overrides)
    conf_dir = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="run", overrides=overrides)


def _group_choices(cfg: DictConfig) -> dict[str, str]:
    """The config-group options the pipeline run was composed with (defaults when not under Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    groups = ("data", "model", "trainer", "logger", "callbacks", "paths")
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        return {g: choices[g] for g in groups if choices.get(g) not in (None, "null")}
    return {}


# Renamed stages hash under their old name: the rename alone redoes no complete step.
HASHED_AS = {"train_reranker": "reranker"}
# Settings declared only so that `key=value` overrides work without `+`, at the value that means "not
# set". They are hashed as absent, so declaring them did not change the hash of steps completed before.
NEUTRAL_FLAGS = {
    ("trainer", "max_steps"): -1,
    ("callbacks", "model_checkpoint", "enabled"): True,
    ("callbacks", "lr_monitor", "enabled"): True,
    ("stage", "callbacks", "retrieval_evaluation", "enabled"): True,
    ("model", "attention_dropout"): None,
    ("stage", "module", "attention_dropout"): None,
    ("stage", "quantize"): None,
    ("stage", "module", "grad_cache"): None,
    ("stage", "module", "kd_teacher_temperature"): 1.0,
    ("stage", "datamodule", "train_fold"): None,
    ("stage", "cross_fit_models"): None,
    ("stage", "budget"): None,
    ("stage", "bm25_weight"): 0,
    ("stage", "fusion_weight"): 0,
    ("stage", "fusion_model"): None,
    ("stage", "interpolation_from"): None,
    ("data", "mrr_threshold"): None,
}


def config_hash(sub: DictConfig, previous: str) -> str:
    """Hash of what a step's result depends on, chained with the hash of the steps before it.

    Every stage depends on `stage`, `data`, `model` and `seed`; training stages also on `trainer` and
    `callbacks`. Loggers, paths and where the data cache lives (`data.cache_dir`, e.g. `$SIMLM_CACHE`)
    do not change results, so changing them does not redo a step; nor do the NEUTRAL_FLAGS at their
    neutral value or a stage's rename (HASHED_AS).
    """
    keys = ["stage", "data", "model", "seed"]
    if sub.stage.entry == "simlm.stages.train.run":
        keys += ["trainer", "callbacks"]
    resolved = OmegaConf.to_container(sub, resolve=True)
    hashed = {k: _without_neutral(k, resolved.get(k)) for k in keys}
    if isinstance(hashed["stage"], dict) and hashed["stage"].get("name") in HASHED_AS:
        hashed["stage"] = {**hashed["stage"], "name": HASHED_AS[hashed["stage"]["name"]]}
    if isinstance(hashed["data"], dict):
        hashed["data"] = {k: v for k, v in hashed["data"].items() if k != "cache_dir"}
    text = json.dumps(hashed, sort_keys=True, default=str)
    return hashlib.sha256((previous + "\n" + text).encode("utf-8")).hexdigest()


def _without_neutral(key: str, value: Any) -> Any:
    """`value` (the resolved `key` subtree) without the NEUTRAL_FLAGS under `key` that hold their value."""
    for path, neutral in NEUTRAL_FLAGS.items():
        if path[0] == key:
            value = _drop(value, path[1:], neutral)
    return value


def _drop(tree: Any, path: tuple[str, ...], neutral: Any) -> Any:
    if not isinstance(tree, dict) or path[0] not in tree:
        return tree
    if len(path) == 1:
        return {k: v for k, v in tree.items() if k != path[0]} if tree[path[0]] == neutral else tree
    return {**tree, path[0]: _drop(tree[path[0]], path[1:], neutral)}


def _is_complete(step_dir: Path, digest: str, skipped: bool = False) -> bool:
    """The step finished with this config hash, and was skipped (`unused_teacher`) only if it still is."""
    marker = step_dir / MARKER
    if not marker.is_file():
        return False
    done = json.loads(marker.read_text())
    return done.get("hash") == digest and ("skipped" in done) == skipped


def unused_teacher(name: str, ctx: PipelineContext) -> str | None:
    """Why fold re-ranker `name` need not train: the blended teacher gives re-rankers the weight the
    rerank step validated, and at w = 0 only their logit scale would be used, which that step recorded
    (`rerank.reranker_sd`) on queries no re-ranker trained on. None: it trains."""
    if not (name.startswith(FOLD_PREFIX) and ctx.teacher_blend and ctx.cfg.stage.get("skip_unused_teachers")):
        return None
    path = ctx.out("rerank") / "metrics.json"
    if path.is_file() and unused_reranker_scale(json.loads(path.read_text())) is not None:
        return f"the rerank step gave the re-ranker w = 0 ({path}), so the KD teacher does not use its logits"
    return None


def resolve_val_split(cfg: DictConfig) -> None:
    """Alternatives in `data.val_split` (`dev|holdout:0.1`) -> the one the data set has, once, so every
    step (and its config hash) sees the same concrete split."""
    value = cfg.data.get("val_split")
    if not (isinstance(value, str) and "|" in value):
        return
    from simlm.data.dataset import RetrievalData

    spec = RetrievalData.from_config(cfg.data).val_spec
    chosen = None if spec is None else spec.text
    log.info("pipeline: data.val_split=%s -> %s", value, chosen)
    with open_dict(cfg):
        cfg.data.val_split = chosen


def pipeline_steps(ctx: PipelineContext) -> dict[str, Step]:
    """The steps to run in data-flow order; cross-fitting adds its K fold re-rankers before `teacher_scores`."""
    folds = ctx.cross_fit_folds
    if folds and "teacher_scores" not in ctx.steps:
        raise ValueError(
            "stage.cross_fit_folds trains teachers for stage=teacher_scores, which is not in stage.steps"
        )
    if folds == 1 or folds < 0:
        raise ValueError(f"stage.cross_fit_folds must be 0 (off) or at least 2, got {folds}")
    steps: dict[str, Step] = {}
    for name in ctx.steps:
        if name == "teacher_scores":
            steps.update({fold_step_name(i): fold_step(i, folds) for i in range(folds)})
        steps[name] = STEPS[name]
    return steps


def check_step_params(cfg: DictConfig, steps: dict[str, Step], ctx: PipelineContext) -> dict[str, DictConfig]:
    """Every step's parameters (`simlm.stages.params`) before the first step runs, not hours into the
    pipeline; the error names the step. Returns the composed step configs (`step_config`)."""
    from simlm.stages.params import ParamError, check_stage_params

    configs = {}
    for name, step in steps.items():
        configs[name] = step_config(cfg, step, ctx)
        try:
            check_stage_params(configs[name])
        except ParamError as e:
            where = f"stage.step_overrides.{name}.{e.key}"
            raise ParamError(f"pipeline step {name}: {e} (the step's {e.key}: set {where})", e.key) from None
    if "teacher_scores" in configs and "kd_biencoder" in configs:
        _check_teacher_covers_kd_groups(configs["teacher_scores"], configs["kd_biencoder"])
    return configs


def _check_teacher_covers_kd_groups(teacher: DictConfig, kd: DictConfig) -> None:
    """The KD step samples groups of `train_n_passages` from the teacher's file: a teacher that scores
    fewer negatives would make every group repeat them (`fill=repeat`), silently."""
    from simlm.stages.params import ParamError

    scored, group = teacher.stage.get("num_negatives"), int(kd.stage.train_n_passages)
    if scored is not None and int(scored) < group - 1:
        key = "stage.step_overrides.teacher_scores.stage.num_negatives"
        raise ParamError(
            f"pipeline: the teacher scores {scored} negatives per query ({key}) but the KD step samples "
            f"groups of {group} passages ({group - 1} negatives; stage.step_overrides.kd_biencoder.stage."
            f"train_n_passages): set {key}={group - 1} (or null: all of them)",
            key,
        )


def run(cfg: DictConfig) -> Metrics:
    """Run the configured steps in order, skipping complete ones; write the results table and chart."""
    from simlm.stages import run_stage

    names = list(cfg.stage.steps)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ValueError(f"unknown pipeline steps {unknown}; known: {list(STEPS)}")
    order = [n for n in STEPS if n in names]  # the data flow fixes the order
    resolve_val_split(cfg)
    ctx = PipelineContext(cfg, order)
    steps = pipeline_steps(ctx)
    order = list(steps)
    configs = check_step_params(cfg, steps, ctx)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    previous = ""
    timings: dict[str, float] = {}
    for name, step in steps.items():
        sub = configs[name]
        digest = config_hash(sub, previous)
        step_dir = ctx.out(name)
        unused = unused_teacher(name, ctx)
        if _is_complete(step_dir, digest, skipped=unused is not None):
            log.info("pipeline: %s already complete with this config, skipped", name)
            timings[name] = json.loads((step_dir / MARKER).read_text()).get("seconds", 0.0)
        else:
            if step_dir.exists():  # interrupted or run with another config: redo from scratch
                shutil.rmtree(step_dir)
            step_dir.mkdir(parents=True)
            (step_dir / "config.yaml").write_text(OmegaConf.to_yaml(sub))
            marker = {"hash": digest, "stage": step.stage, "seconds": 0.0}
            if unused is not None:
                log.info("pipeline: %s not run: %s", name, unused)
                marker["skipped"] = unused
            else:
                log.info("pipeline: running %s (stage=%s) in %s", name, step.stage, step_dir)
                started = time.perf_counter()
                run_stage(sub)
                marker["seconds"] = time.perf_counter() - started
            timings[name] = marker["seconds"]
            write_json(step_dir / MARKER, marker)
        previous = digest
    results = collect_results(ctx, order, timings)
    compare_with_inputs(ctx, order, results)
    write_results(ctx.work_dir, results, ctx.eval_split, ctx.val_split)
    out_dir = Path(cfg.paths.output_dir)
    if out_dir.resolve() != ctx.work_dir.resolve():
        write_results(out_dir, results, ctx.eval_split, ctx.val_split)
    print(
        f"SimLM pipeline on {cfg.data.name} ({_splits_title(ctx.eval_split, ctx.val_split)}) - {ctx.work_dir}"
    )
    print(results_table(results, ctx.eval_split, ctx.val_split))
    metrics: Metrics = {
        ctx.eval_split: {f"{r['step']}/{k}": v for r in results for k, v in r.items() if isinstance(v, float)}
    }
    if ctx.val_split is not None:
        metrics[ctx.val_split] = {f"{r['step']}/{k}": v for r in results for k, v in r["val"].items()}
    return metrics


RESULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "acc@20", "acc@100")
COMPARE_METRICS = ("ndcg@10", "acc@20")  # the first one the rows have is compared with each row's input


def _splits_title(split: str, val_split: str | None) -> str:
    return split if val_split is None else f"validation split {val_split}, test split {split}"


def collect_results(
    ctx: PipelineContext, order: list[str], timings: dict[str, float]
) -> list[dict[str, Any]]:
    """One row per step: its metrics on the eval split (flat keys) and on the validation split (`val`).

    A training step's validation metrics are its final retrieval of the validation split; the
    re-ranker's training step has no retrieval of its own, so its row holds its validation re-ranking
    (`val` block of its metrics) and no eval-split metrics. Steps without metrics (teacher scores) keep
    their row for the time they took; skipped ones (`unused_teacher`) have none.
    """
    rows = []
    for name in order:
        marker = ctx.out(name) / MARKER
        if marker.is_file() and "skipped" in json.loads(marker.read_text()):
            continue  # a fold re-ranker the teacher did not need (unused_teacher)
        path = ctx.out(name) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        test = metrics.get(ctx.eval_split) or {}
        val = (metrics.get(ctx.val_split) if ctx.val_split else None) or {}
        if not val and (name == "reranker" or name.startswith(FOLD_PREFIX)):
            val = metrics.get("val") or {}
        row: dict[str, Any] = {"system": _label(name, metrics, ctx), "step": name}
        row.update({k: float(test[k]) for k in RESULT_METRICS if k in test})
        row["val"] = {k: float(val[k]) for k in RESULT_METRICS if k in val}
        if "weight" in (metrics.get("interpolation") or {}):
            row["weight"] = float(metrics["interpolation"]["weight"])
        row["seconds"] = round(float(timings.get(name, 0.0)), 1)
        rows.append(row)
    return rows


def input_step(name: str, ctx: PipelineContext) -> str | None:
    """The step whose run `name` builds on (its row is compared with that row), or None."""
    student = ctx.cfg.stage.get("student_model")
    builds_on = {
        "retriever1": "zeroshot",  # the same init model, before fine-tuning
        "retriever2": "retriever1",
        "rerank": ctx.negatives_step,
    }
    if student in ("retriever1", "retriever2"):
        builds_on["kd_biencoder"] = student
    elif student in (None, "rlm"):  # the init model, which zero-shot searched with
        builds_on["kd_biencoder"] = "zeroshot"
    return builds_on.get(name)  # a student from another folder: no step ran it


def compare_with_inputs(ctx: PipelineContext, order: list[str], rows: list[dict[str, Any]]) -> None:
    """Add `vs` to each row that builds on another step's run: per split (validation and eval), the
    paired comparison of their per-query nDCG@10 (QA: acc@20) on the same queries
    (`simlm.evaluation.paired_comparison`: mean difference, bootstrap interval, randomisation p-value),
    so the table says which gains are larger than the split's noise."""
    from simlm.data.dataset import RetrievalData
    from simlm.data.formats import read_run
    from simlm.evaluation import paired_comparison, per_query

    metric = next((m for m in COMPARE_METRICS if any(m in r for r in rows)), None)
    if metric is None:
        return
    splits = [s for s in (ctx.val_split, ctx.eval_split) if s]
    data = RetrievalData.from_config(ctx.cfg.data)
    cache: dict[tuple[str, str], dict[str, float] | None] = {}

    def values(step: str, split: str) -> dict[str, float] | None:
        if (step, split) not in cache:
            path = ctx.out(step) / f"{split}.trec"
            scored = per_query(read_run(path), data, split, str(path)) if path.is_file() else None
            cache[step, split] = scored[0].get(metric) if scored else None
        return cache[step, split]

    for row in rows:
        base = input_step(row["step"], ctx)
        if base not in order:
            continue
        vs: dict[str, Any] = {"step": base, "metric": metric}
        for split in splits:
            a, b = values(row["step"], split), values(base, split)
            if a is not None and b is not None:
                vs[split] = paired_comparison(a, b, seed=int(ctx.cfg.seed)).as_dict()
        if any(split in vs for split in splits):
            row["vs"] = vs


def _vs_cell(row: dict[str, Any], splits: list[str]) -> str:
    vs = row.get("vs")
    if not vs:
        return ""
    parts = [f"{vs[s]['difference']:+.4f} (p {vs[s]['p_value']:.2g})" if s in vs else "-" for s in splits]
    return f"vs {vs['step']}: " + " / ".join(parts)


def _label(name: str, metrics: dict[str, Any], ctx: PipelineContext) -> str:
    """The row label; the re-rank row says the interpolation weight and where it was chosen."""
    if name.startswith(FOLD_PREFIX):
        label = (
            f"re-ranker without fold {name[len(FOLD_PREFIX) :]} (cross-fitted teacher; val: its score alone)"
        )
    else:
        label = STEPS[name].label
    block = metrics.get("interpolation") or {}
    if "weight" in block:
        where = f"on {block['validation_split']}" if block.get("validation_split") else "fixed"
        bm25 = f", BM25 b = {float(block['bm25_weight']):.1f}" if "bm25_weight" in block else ""
        fusion = f", fusion e = {float(block['fusion_weight']):.1f}" if "fusion_weight" in block else ""
        label += f" (w = {float(block['weight']):.1f}{bm25}{fusion} {where})"
    return label


def results_table(rows: list[dict[str, Any]], split: str, val_split: str | None) -> str:
    """Markdown table: the validation split's metrics next to the eval split's, 4 decimals, whole seconds,
    and (when rows were compared with their inputs) the paired difference and p-value per split."""
    test_metrics = [m for m in RESULT_METRICS if any(m in r for r in rows)]
    val_metrics = [m for m in RESULT_METRICS if any(m in r["val"] for r in rows)] if val_split else []
    header = [f"{val_split} {m}" for m in val_metrics] + [f"{split} {m}" for m in test_metrics]
    compared = next((r["vs"] for r in rows if r.get("vs")), None)
    splits = [s for s in (val_split, split) if s]
    if compared:
        header.append(f"{compared['metric']} vs the step it builds on ({' / '.join(splits)}; paired p)")
    lines = ["| step | " + " | ".join(header) + " | seconds |", "|---|" + "---|" * (len(header) + 1)]
    for r in rows:
        cells = [f"{r['val'][m]:.4f}" if m in r["val"] else "" for m in val_metrics]
        cells += [f"{r[m]:.4f}" if m in r else "" for m in test_metrics]
        if compared:
            cells.append(_vs_cell(r, splits))
        lines.append(f"| {r['system']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)


def write_results(
    out_dir: Path, rows: list[dict[str, Any]], split: str, val_split: str | None = None
) -> None:
    """`results.json`, `results.md` (markdown table) and `results.png` (grouped bars) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", {"split": split, "val_split": val_split, "rows": rows})
    with atomic_write(out_dir / "results.md") as f:
        f.write(results_table(rows, split, val_split) + "\n")
    metrics = [m for m in RESULT_METRICS if any(m in r for r in rows)]
    _plot(out_dir / "results.png", [r for r in rows if any(m in r for m in metrics)], metrics, split)


def _plot(path: Path, rows: list[dict[str, Any]], metrics: list[str], split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / max(len(metrics), 1)
    x = np.arange(len(rows))
    for i, metric in enumerate(metrics):
        ax.bar(x + i * width, [r.get(metric, 0.0) for r in rows], width, label=metric)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2)
    ax.set_xticklabels([r["system"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"SimLM pipeline ({split})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
