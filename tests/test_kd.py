"""Knowledge distillation: the KD loss through BiEncoderModule, repeat-fill group sampling, teacher files
from `stage=teacher_scores`, and `stage=kd_biencoder` end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from simlm.data.corpus import Corpus, Passage
from simlm.data.datamodules import GroupDataset
from simlm.data.formats import ScoredDocs, TrainingExample, read_examples
from simlm.data.sampling import sample_group
from simlm.models.cross_encoder import load_reranker, passage_text
from simlm.models.encoder import RetrievalSettings, load_tokenizer, tokenize_passages, tokenize_queries
from simlm.models.hub import ModelSourceError
from simlm.modules.biencoder import BiEncoderModule
from simlm.retrieval.rerank import score_texts
from simlm.stages import run_stage
from tests.conftest import PROJECT_ROOT
from tests.test_reranker import build_tiny_reranker, texts

MAX_LEN = 64
N_NEG = 10  # negatives scored per example: fewer than a KD group of 16 needs, so the window wraps
# A random tiny BERT's [CLS] vector hardly depends on the input (every cosine is ~1, the student is
# uniform); mean pooling gives the unit tests distinct student scores to check and to move.
MEAN = {"pooling": "mean"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_at(out: Path, cache_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from simlm.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="run",
            overrides=[f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}", *overrides],
        )


@pytest.fixture(scope="module")
def tiny_reranker(tiny_bert, tmp_path_factory) -> Path:
    return build_tiny_reranker(tiny_bert, tmp_path_factory.mktemp("kd-tiny-reranker"))


def score_teacher(out: Path, cache_dir, small_beir, small_beir_bm25, tiny_reranker, *extra: str) -> Path:
    """Run `stage=teacher_scores` on the BM25 training examples (first 10 negatives) into `out`."""
    run_stage(
        compose_at(
            out,
            cache_dir,
            "stage=teacher_scores",
            "data=beir",
            f"data.root={small_beir}",
            f"stage.model={tiny_reranker}",
            f"stage.examples_file={small_beir_bm25 / 'train.jsonl'}",
            f"stage.num_negatives={N_NEG}",
            f"stage.max_length={MAX_LEN}",
            "stage.batch_size=64",
            *extra,
        )
    )
    return out


@pytest.fixture(scope="module")
def teacher_run(small_beir, small_beir_bm25, tiny_reranker, tmp_path_factory, cache_dir) -> Path:
    """Output folder of `stage=teacher_scores` on the BM25 training examples (first 10 negatives)."""
    return score_teacher(
        tmp_path_factory.mktemp("teacher"), cache_dir, small_beir, small_beir_bm25, tiny_reranker
    )


# ------------------------------------------------------------------------------------ group sampling


def test_repeat_fill_wraps_the_cyclic_window():
    ex = TrainingExample(
        "q", "query", ScoredDocs(["p0", "p1"], [5.0, 6.0]), ScoredDocs(["n0", "n1", "n2"], [1.0, 2.0, 3.0])
    )
    n = 8
    for epoch in range(3):
        offset = epoch + 123
        group = sample_group(ex, n, epoch, seed=123, corpus=None, fill="repeat")
        assert group.doc_ids == [f"p{offset % 2}"] + [f"n{(offset * (n - 1) + i) % 3}" for i in range(n - 1)]
        assert group.scores == [5.0 + offset % 2] + [1.0 + (offset * (n - 1) + i) % 3 for i in range(n - 1)]
        assert group.n_random == 0
    with pytest.raises(ValueError, match="corpus"):  # the default still tops up with random passages
        sample_group(ex, n, 0, 123, corpus=None)
    with pytest.raises(ValueError, match="fill"):
        sample_group(ex, n, 0, 123, corpus=None, fill="cycle")
    with pytest.raises(ValueError, match="no negatives"):
        sample_group(
            TrainingExample("q", "x", ScoredDocs(["p"], [1.0]), ScoredDocs()), 4, 0, 0, None, "repeat"
        )


# ------------------------------------------------------------------------------------ KD loss


def kd_batch(tokenizer, groups: int, n: int, seed: int = 0) -> dict:
    settings = RetrievalSettings()
    g = torch.Generator().manual_seed(seed)
    return {
        "query": dict(tokenize_queries(tokenizer, texts(seed, groups), settings)),
        "passage": dict(
            tokenize_passages(tokenizer, [""] * (groups * n), texts(seed + 1, groups * n), settings)
        ),
        "scores": 3 * torch.randn(groups, n, generator=g),
    }


def bf_kd(q: torch.Tensor, p: torch.Tensor, teacher: torch.Tensor, n: int, t: float) -> float:
    """(1/B) sum_i KL(softmax(teacher_i) || softmax(q_i . p_{i*n+j} / t over j < n)), with Python loops."""
    total = 0.0
    for i in range(q.shape[0]):
        student = [float(q[i] @ p[i * n + j]) / t for j in range(n)]
        t_row = [float(x) for x in teacher[i]]
        ls = [s - max(student) - math.log(sum(math.exp(v - max(student)) for v in student)) for s in student]
        lt = [s - max(t_row) - math.log(sum(math.exp(v - max(t_row)) for v in t_row)) for s in t_row]
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
    return total / q.shape[0]


def test_kd_loss_is_kl_teacher_student_plus_alpha_contrastive(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    groups, n, t = 3, 4, 0.05
    batch = kd_batch(tokenizer, groups, n)
    module = BiEncoderModule(str(tiny_bert), MEAN, kd_alpha=0.3, temperature=t, train_n_passages=n)
    module.eval()  # no dropout: the brute force sees the same embeddings
    loss, metrics = module.compute_loss(batch, training=True)
    with torch.no_grad():
        q, p = module(batch)
    assert metrics["kd_loss"] == pytest.approx(bf_kd(q.double(), p.double(), batch["scores"], n, t), rel=1e-5)
    assert loss.item() == pytest.approx(metrics["kd_loss"] + 0.3 * metrics["contrastive_loss"], rel=1e-6)

    # kd_mask_hn: the query's own hard negatives leave the contrastive term (in-batch passages stay)
    masked = BiEncoderModule(
        str(tiny_bert),
        MEAN,
        kd_alpha=0.3,
        kd_mask_hn=True,
        scaled_loss=False,
        full_contrastive=False,
        temperature=t,
    )
    masked.eval()
    _, m_metrics = masked.compute_loss(batch, training=True)
    ce = 0.0
    for i in range(groups):
        cols = [j for j in range(groups * n) if j // n != i or j % n == 0]
        row = [float(q[i] @ p[j]) / t for j in cols]
        ce += -(row[cols.index(i * n)] - math.log(sum(math.exp(v) for v in row)))
    assert m_metrics["contrastive_loss"] == pytest.approx(ce / groups, rel=1e-5)


def test_a_few_kd_steps_pull_the_student_toward_the_teacher(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    batch = kd_batch(tokenizer, 4, 6, seed=7)
    torch.manual_seed(0)
    module = BiEncoderModule(str(tiny_bert), MEAN, kd_alpha=0.2, temperature=0.05, train_n_passages=6)

    def kl() -> float:
        module.eval()
        with torch.no_grad():
            return module.compute_loss(batch, training=False)[1]["kd_loss"]

    before = kl()
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for _ in range(8):
        module.train()
        loss, _ = module.compute_loss(batch, training=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = kl()
    assert after < 0.7 * before, (before, after)


# ------------------------------------------------------------------------------------ teacher files


def test_teacher_file_round_trips_and_follows_the_sampled_groups(
    teacher_run, small_beir, small_beir_bm25, tiny_reranker
):
    from simlm.data.dataset import RetrievalData

    source = read_examples(small_beir_bm25 / "train.jsonl")
    kd = read_examples(teacher_run / "kd_train.jsonl")
    assert [ex.query_id for ex in kd] == [ex.query_id for ex in source]
    for s, k in zip(source, kd):
        assert k.query == s.query and k.positives.doc_ids == s.positives.doc_ids
        assert k.negatives.doc_ids == s.negatives.doc_ids[:N_NEG]
        assert len(k.negatives.scores) == len(k.negatives.doc_ids)
    stats = json.loads((teacher_run / "metrics.json").read_text())["teacher_scores"]
    assert stats["examples"] == 150
    assert stats["pairs"] == sum(len(ex.positives.doc_ids) + len(ex.negatives.doc_ids) for ex in kd)

    # the scores are the re-ranker's raw logits (5 decimals)
    corpus = RetrievalData(small_beir, layout="beir").corpus
    model, tokenizer = load_reranker(str(tiny_reranker))
    for ex in kd[:5]:
        ids = ex.positives.doc_ids + ex.negatives.doc_ids
        passages = corpus.passages([corpus.row(d) for d in ids])
        direct = score_texts(
            model,
            tokenizer,
            [ex.query] * len(ids),
            [passage_text(p.title, p.text) for p in passages],
            max_length=MAX_LEN,
        )
        assert ex.positives.scores + ex.negatives.scores == pytest.approx(direct.tolist(), abs=1e-5)

    # KD groups of 16 wrap the 10 scored negatives and carry each passage's own teacher score
    dataset = GroupDataset(kd, corpus, n_passages=16, seed=123, fill="repeat")
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index in (0, 7):
            ex = kd[index]
            teacher = dict(
                zip(ex.positives.doc_ids + ex.negatives.doc_ids, ex.positives.scores + ex.negatives.scores)
            )
            group = sample_group(ex, 16, epoch, 123, corpus, fill="repeat")
            item = dataset[index]
            assert item["scores"] == [teacher[d] for d in group.doc_ids]
            assert item["texts"] == corpus.texts([corpus.row(d) for d in group.doc_ids])
            assert group.doc_ids[0] in ex.positives.doc_ids and len(set(group.doc_ids[1:])) == N_NEG


def _pair_bm25(examples: list[TrainingExample], root: Path) -> np.ndarray:
    """Brute-force BM25 of every (query, positive or negative) pair of `examples`, in file order."""
    from simlm.data.dataset import RetrievalData
    from simlm.retrieval.bm25 import BM25Retriever

    index = BM25Retriever().index(RetrievalData(root, layout="beir").corpus)
    return np.concatenate(
        [
            index.score_pairs(
                {ex.query_id: ex.query},
                [(ex.query_id, d) for d in ex.positives.doc_ids + ex.negatives.doc_ids],
            )
            for ex in examples
        ]
    )


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def test_a_blended_teacher_is_the_validated_interpolation_on_the_re_rankers_scale(
    teacher_run, small_beir, small_beir_bm25, tiny_reranker, tmp_path, cache_dir
):
    """stage.interpolation_from: w x re-ranker + b x BM25 + (1 - w - b) x first stage, each z-scored over
    all pairs, times the logits' sd; checked against the plain teacher file and brute-force BM25."""
    rerank_metrics = tmp_path / "metrics.json"

    def teacher(out: Path, interpolation: dict) -> list[TrainingExample]:
        rerank_metrics.write_text(json.dumps(interpolation))
        extra = f"stage.interpolation_from={rerank_metrics}"
        score_teacher(out, cache_dir, small_beir, small_beir_bm25, tiny_reranker, extra)
        return read_examples(out / "kd_train.jsonl")

    out = tmp_path / "blended"
    blended = teacher(out, {"interpolation": {"weight": 0.3, "bm25_weight": 0.2}})
    source = read_examples(small_beir_bm25 / "train.jsonl")
    plain = read_examples(teacher_run / "kd_train.jsonl")
    logits = np.array([s for ex in plain for s in ex.positives.scores + ex.negatives.scores])
    first = np.array([s for ex in source for s in ex.positives.scores + ex.negatives.scores[:N_NEG]])
    bm25 = _pair_bm25(plain, small_beir)
    expected = logits.std() * (0.3 * _z(logits) + 0.2 * _z(bm25) + 0.5 * _z(first))
    got = np.array([s for ex in blended for s in ex.positives.scores + ex.negatives.scores])
    assert got == pytest.approx(expected, abs=2e-4)  # the logits were rounded to 5 decimals
    assert [ex.negatives.doc_ids for ex in blended] == [ex.negatives.doc_ids for ex in plain]
    stats = json.loads((out / "metrics.json").read_text())["teacher_scores"]
    assert stats["weight"] == 0.3 and stats["bm25_weight"] == 0.2
    # w = 1: the re-ranker's logits themselves; a file without a weight is refused
    assert teacher(tmp_path / "alone", {"interpolation": {"weight": 1.0}}) == plain
    with pytest.raises(ValueError, match="no interpolation.weight"):
        teacher(tmp_path / "bad", {"rerank": {}})


def test_a_blended_teacher_weighs_in_the_second_bi_encoder_the_rerank_step_recorded(
    teacher_run, small_beir, small_beir_bm25, tiny_reranker, tiny_bert, tmp_path, cache_dir
):
    """interpolation.fusion_weight / fusion_model: w x re-ranker + b x BM25 + e x the second bi-encoder
    (its query . passage score) + the rest x first stage, z-scored over all pairs; brute force. A weight
    without a model config is refused."""
    from simlm.data.dataset import RetrievalData
    from simlm.models.encoder import load_encoder
    from simlm.retrieval.dense import score_pairs_dense

    model_cfg = {"name_or_path": str(tiny_bert), "pooling": "mean", "p_max_len": 32}
    rerank_metrics = tmp_path / "metrics.json"
    blend = {"weight": 0.3, "bm25_weight": 0.2, "fusion_weight": 0.25, "fusion_model": model_cfg}
    rerank_metrics.write_text(json.dumps({"interpolation": blend}))
    out = score_teacher(
        tmp_path / "fused",
        cache_dir,
        small_beir,
        small_beir_bm25,
        tiny_reranker,
        f"stage.interpolation_from={rerank_metrics}",
    )
    fused = read_examples(out / "kd_train.jsonl")
    source = read_examples(small_beir_bm25 / "train.jsonl")
    plain = read_examples(teacher_run / "kd_train.jsonl")
    logits = np.array([s for ex in plain for s in ex.positives.scores + ex.negatives.scores])
    first = np.array([s for ex in source for s in ex.positives.scores + ex.negatives.scores[:N_NEG]])
    pairs = [(ex.query, d) for ex in plain for d in ex.positives.doc_ids + ex.negatives.doc_ids]
    encoder, tokenizer = load_encoder(model_cfg)
    dense = score_pairs_dense(encoder, tokenizer, RetrievalData(small_beir, layout="beir").corpus, pairs)
    expected = logits.std() * (
        0.3 * _z(logits) + 0.2 * _z(_pair_bm25(plain, small_beir)) + 0.25 * _z(dense) + 0.25 * _z(first)
    )
    got = np.array([s for ex in fused for s in ex.positives.scores + ex.negatives.scores])
    assert got == pytest.approx(expected, abs=2e-4)
    stats = json.loads((out / "metrics.json").read_text())["teacher_scores"]
    assert (stats["weight"], stats["bm25_weight"], stats["fusion_weight"]) == (0.3, 0.2, 0.25)
    rerank_metrics.write_text(json.dumps({"interpolation": {**blend, "fusion_model": {"pooling": "mean"}}}))
    with pytest.raises(ValueError, match="interpolation.fusion_model must be a model config"):
        score_teacher(
            tmp_path / "bad",
            cache_dir,
            small_beir,
            small_beir_bm25,
            tiny_reranker,
            f"stage.interpolation_from={rerank_metrics}",
        )


def test_a_cross_fitted_blended_teacher_at_w_0_loads_no_reranker_and_takes_the_recorded_scale(
    small_beir, small_beir_bm25, tmp_path, cache_dir
):
    """Cross-fitted teachers at w = 0 with the rerank step's `reranker_sd`: b x BM25 + (1 - b) x first
    stage, z-scored over all pairs, times that sd, with no re-ranker loaded (the fold models do not
    exist); brute-force check. A single re-ranker, or no recorded scale, still needs the model."""
    rerank_metrics = tmp_path / "metrics.json"
    scale = {"rerank": {"reranker_sd": 2.5}}
    missing_folds = f"stage.cross_fit_models=[{tmp_path / 'no-fold0'},{tmp_path / 'no-fold1'}]"

    def teacher(out: Path, recorded: dict, *extra: str) -> Path:
        rerank_metrics.write_text(
            json.dumps({"interpolation": {"weight": 0.0, "bm25_weight": 0.3}, **recorded})
        )
        return score_teacher(
            out,
            cache_dir,
            small_beir,
            small_beir_bm25,
            tmp_path / "no-reranker",
            f"stage.interpolation_from={rerank_metrics}",
            *extra,
        )

    out = teacher(tmp_path / "w0", scale, missing_folds)
    got = read_examples(out / "kd_train.jsonl")
    source = {ex.query_id: ex for ex in read_examples(small_beir_bm25 / "train.jsonl")}
    assert [ex.query_id for ex in got] == list(source)
    first = np.array(
        [
            s
            for ex in got
            for s in source[ex.query_id].positives.scores + source[ex.query_id].negatives.scores[:N_NEG]
        ]
    )
    expected = 2.5 * (0.3 * _z(_pair_bm25(got, small_beir)) + 0.7 * _z(first))
    scores = np.array([s for ex in got for s in ex.positives.scores + ex.negatives.scores])
    assert scores == pytest.approx(expected, abs=1e-4)
    stats = json.loads((out / "metrics.json").read_text())["teacher_scores"]
    assert stats["teachers"] == 0 and stats["weight"] == 0.0 and stats["bm25_weight"] == 0.3
    # a single re-ranker is still loaded (a missing one is an error naming the key), and so are the
    # fold re-rankers when no scale is recorded
    with pytest.raises(ModelSourceError, match="stage.model"):
        teacher(tmp_path / "single", scale)
    with pytest.raises(ModelSourceError, match=r"stage.cross_fit_models\[0\]"):
        teacher(tmp_path / "no-scale", {}, missing_folds)


# ------------------------------------------------------------------------------------ configs and stage


def test_kd_stage_is_the_biencoder_with_distillation_on(compose):
    cfg = compose("stage=kd_biencoder")
    stage = cfg.stage
    assert stage.module._target_ == "simlm.modules.biencoder.BiEncoderModule"
    assert stage.module.kd_alpha == 0.2 and stage.module.kd_mask_hn is False
    assert stage.train_n_passages == 24 and stage.module.train_n_passages == 24
    assert stage.datamodule.seed == 123 and stage.datamodule.fill == "repeat"
    assert compose("stage=biencoder").stage.datamodule.get("fill", "random") == "random"

    exp = compose("+experiment=msmarco_kd_biencoder").stage
    assert exp.name == "kd_biencoder" and exp.module.lr == 3e-5 and exp.datamodule.batch_size == 16
    assert compose("+experiment=msmarco_kd_biencoder").model.name_or_path == "intfloat/simlm-base-msmarco"
    rr = compose("+experiment=msmarco_reranker")
    assert rr.stage.module.forward_factor == 4 and rr.stage.train_n_passages == 64
    assert rr.model.name_or_path == "google/electra-base-discriminator"


def test_kd_biencoder_end_to_end(compose, tmp_path, small_beir, tiny_bert, teacher_run):
    out = tmp_path / "kd"
    cfg = compose(
        "stage=kd_biencoder",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        f"stage.datamodule.train_file={teacher_run / 'kd_train.jsonl'}",
        "stage.train_n_passages=16",
        f"model.p_max_len={MAX_LEN}",
        "stage.datamodule.batch_size=8",
        "stage.module.lr=1e-3",
        "stage.module.warmup_steps=5",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        output_dir=out,
    )
    run_stage(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val", "test"} <= set(metrics) and "ndcg@10" in metrics["val"]
    header = next(out.glob("csv/version_*/metrics.csv")).read_text().splitlines()[0]
    assert "train/kd_loss" in header and "train/contrastive_loss" in header
    assert (out / "model" / "simlm_retrieval.json").is_file()


def test_kd_refuses_groups_without_teacher_scores(tiny_bert):
    corpus = Corpus.from_passages(Passage(f"d{i}", "", f"text {i}") for i in range(20))
    ex = TrainingExample("q", "query", ScoredDocs(["d0"], [1.0]), ScoredDocs(["d1"], [0.5]))
    item = GroupDataset([ex], corpus, n_passages=4, seed=0)[0]  # random fill: NaN scores
    tokenizer = load_tokenizer(tiny_bert)
    settings = RetrievalSettings()
    batch = {
        "query": dict(tokenize_queries(tokenizer, [item["query"]], settings)),
        "passage": dict(tokenize_passages(tokenizer, item["titles"], item["texts"], settings)),
        "scores": torch.tensor([item["scores"]]),
    }
    module = BiEncoderModule(str(tiny_bert), kd_alpha=0.2, train_n_passages=4)
    with pytest.raises(ValueError, match="teacher"):
        module.compute_loss(batch, training=True)
