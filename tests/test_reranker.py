"""Cross-encoder re-ranker: its losses through the module, forward-factor selection, scoring, the merge
rule, the datamodule, and `stage=train_reranker` / `stage=rerank` end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from simlm.data.formats import read_run
from simlm.models.cross_encoder import load_reranker, passage_text, tokenize_pairs
from simlm.modules.reranker import CrossEncoderReranker
from simlm.retrieval.rerank import merge_reranked, score_texts
from simlm.stages import run_stage

MAX_LEN = 64


def build_tiny_reranker(src: Path, out: Path) -> Path:
    """The tiny BERT as a one-logit sequence classifier with a seeded head (every load scores alike)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_reranker(tiny_bert, tmp_path_factory) -> Path:
    return build_tiny_reranker(tiny_bert, tmp_path_factory.mktemp("tiny-reranker"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = "json path file list dict parse read write open socket thread string number format".split()  # noqa: SIM905


def texts(seed: int, count: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        length = int(torch.randint(3, 30, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=g)))
    return out


def group_batch(tokenizer, groups: int, n: int, seed: int = 0) -> dict:
    queries = [q for q in texts(seed, groups) for _ in range(n)]
    pairs = dict(tokenize_pairs(tokenizer, queries, texts(seed + 1, groups * n), MAX_LEN))
    return {"pairs": pairs, "scores": torch.zeros(groups, n)}


def record_calls(model: torch.nn.Module) -> tuple[list[dict], object]:
    """Record every forward of `model`: its mode, its input ids and its logits."""
    calls: list[dict] = []

    def hook(module, args, kwargs, output):
        calls.append(
            {
                "training": module.training,
                "input_ids": kwargs["input_ids"].clone(),
                "logits": output.logits.detach()[:, 0].double(),
            }
        )

    return calls, model.register_forward_hook(hook, with_kwargs=True)


# ------------------------------------------------------------------------------------ brute force


def bf_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def bf_kl(log_p: list[float], log_q: list[float]) -> float:
    return sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q))


def bf_rdrop(rows_a: list[list[float]], rows_b: list[list[float]], weight: float) -> float:
    total = 0.0
    for a, b in zip(rows_a, rows_b):
        la, lb = bf_log_softmax(a), bf_log_softmax(b)
        total += 0.5 * (-la[0] - lb[0]) + weight * 0.5 * (bf_kl(lb, la) + bf_kl(la, lb))
    return total / len(rows_a)


# ------------------------------------------------------------------------------------ module


def test_listwise_ce_and_rdrop_through_the_module(tiny_reranker):
    _, tokenizer = load_reranker(str(tiny_reranker))
    groups, n = 3, 5
    batch = group_batch(tokenizer, groups, n)

    module = CrossEncoderReranker(str(tiny_reranker), forward_factor=1, rdrop=True, rdrop_weight=0.7)
    with torch.no_grad():  # the seeded head's logits are ~0.02 apart: spread them so both terms matter
        module.model.classifier.weight.mul_(300.0)
    calls, handle = record_calls(module.model)
    torch.manual_seed(0)
    loss, metrics = module.training_loss(batch)
    handle.remove()
    (call,) = calls  # both dropout samples go through one forward of the duplicated rows
    assert call["training"] and call["input_ids"].shape[0] == 2 * groups * n
    a = call["logits"][: groups * n].view(groups, n)
    b = call["logits"][groups * n :].view(groups, n)
    assert not torch.allclose(a, b)  # dropout made two different samples
    assert bf_rdrop(a.tolist(), b.tolist(), 1.0) - bf_rdrop(a.tolist(), b.tolist(), 0.0) > 0.01
    assert loss.item() == pytest.approx(bf_rdrop(a.tolist(), b.tolist(), 0.7), rel=1e-5)
    assert metrics["acc"] == pytest.approx(sum(int(r.argmax() == 0) for r in a) / groups)
    loss.backward()
    assert module.model.classifier.weight.grad is not None

    plain = CrossEncoderReranker(str(tiny_reranker), forward_factor=1, rdrop=False)
    calls, handle = record_calls(plain.model)
    loss, _ = plain.training_loss(batch)
    handle.remove()
    (call,) = calls
    rows = call["logits"].view(groups, n).tolist()
    expected = sum(-bf_log_softmax(r)[0] for r in rows) / groups
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_head_lr_applies_to_the_newly_initialised_head_only(tiny_bert, tiny_reranker):
    from simlm.optim import build_optimizer

    module = CrossEncoderReranker(str(tiny_bert), lr=1e-5, head_lr=1e-3)  # a masked LM: no pooler, no head
    new = {
        f"model.{part}.{kind}" for part in ("classifier", "bert.pooler.dense") for kind in ("weight", "bias")
    }
    assert set(module.param_lrs) == new
    optimizer, scheduler = build_optimizer(module, 1e-5, 0.01, 2, 10, "linear", param_lrs=module.param_lrs)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    head_w, head_b = module.model.classifier.weight, module.model.classifier.bias
    word_emb = module.model.bert.embeddings.word_embeddings.weight
    assert group_of[id(head_w)]["lr"] == pytest.approx(1e-3 * 0.5)  # warmup step 0 of 2, linear
    assert group_of[id(word_emb)]["lr"] == pytest.approx(1e-5 * 0.5)
    assert group_of[id(head_w)]["weight_decay"] == 0.01 and group_of[id(head_b)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.parameters()))
    optimizer.step()
    scheduler.step()  # the schedule scales every group alike
    assert group_of[id(head_b)]["lr"] / group_of[id(word_emb)]["lr"] == pytest.approx(100.0)

    assert CrossEncoderReranker(str(tiny_reranker), head_lr=1e-3).param_lrs == {}  # a trained head
    with pytest.raises(ValueError, match="param_lrs names parameters"):
        build_optimizer(module, 1e-5, 0.0, 0, 10, param_lrs={"model.nope": 1.0})


def test_forward_factor_trains_on_the_positive_and_the_hardest_negatives(tiny_reranker):
    _, tokenizer = load_reranker(str(tiny_reranker))
    groups, n, f = 4, 8, 2
    module = CrossEncoderReranker(str(tiny_reranker), forward_factor=f, rdrop=False)
    batch = group_batch(tokenizer, groups, n, seed=3)
    module.model.eval()
    with torch.no_grad():
        scores = module(batch["pairs"]).view(groups, n)
    module.model.train()
    # make every positive (index 0) the lowest-scored passage of its group: it must still be kept
    order = torch.argsort(scores, dim=1)  # ascending: the lowest first
    rows = (torch.arange(groups).unsqueeze(1) * n + order).reshape(-1)
    batch["pairs"] = {k: v[rows] for k, v in batch["pairs"].items()}
    scores = scores.gather(1, order)

    calls, handle = record_calls(module.model)
    module.training_loss(batch)
    handle.remove()
    assert [c["training"] for c in calls] == [False, True]  # scored in eval mode, trained in train mode
    assert torch.allclose(calls[0]["logits"].view(groups, n), scores.double(), atol=1e-5)
    keep = n // f
    expected = []
    for g in range(groups):
        negatives = sorted(range(1, n), key=lambda j: -float(scores[g, j]))[: keep - 1]
        expected += [g * n + j for j in [0, *negatives]]
    trained = calls[1]["input_ids"]
    full = batch["pairs"]["input_ids"][expected]
    width = trained.shape[1]
    assert torch.equal(trained, full[:, :width])
    assert not full[:, width:].any()  # only columns that are padding in every kept row were dropped
    assert batch["pairs"]["attention_mask"][expected][:, width - 1].any()

    with pytest.raises(ValueError, match="divisible"):
        CrossEncoderReranker(str(tiny_reranker), forward_factor=3).training_loss(batch)


# ------------------------------------------------------------------------------------ scoring and merge


def test_length_sorted_scoring_matches_one_pair_at_a_time(tiny_reranker):
    model, tokenizer = load_reranker(str(tiny_reranker))
    queries, passages = texts(5, 23), [passage_text(t, x) for t, x in zip(["", "T"] * 12, texts(6, 23))]
    got = score_texts(model, tokenizer, queries, passages, max_length=MAX_LEN, batch_size=4)
    model.eval()
    with torch.no_grad():
        for i, (q, p) in enumerate(zip(queries, passages)):
            one = model(**tokenizer(q, p, max_length=MAX_LEN, truncation=True, return_tensors="pt"))
            assert got[i] == pytest.approx(float(one.logits[0, 0]), abs=1e-5)
    assert passage_text("Title", "text") == "Title: text" and passage_text("", "text") == "text"


def test_merge_keeps_the_rest_of_the_run_below_in_its_order():
    run = {
        "q1": [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0), ("e", 5.0)],
        "q2": [("x", 1.0)],
    }
    merged = merge_reranked(run, {"q1": {"a": 0.1, "b": 0.5, "c": 0.3}, "q2": {"x": -2.0}}, depth=3)
    assert [d for d, _ in merged["q1"]] == ["b", "c", "a", "d", "e"]
    assert [s for _, s in merged["q1"]] == [0.5, 0.3, 0.1, -0.9, -1.9]
    assert merged["q2"] == [("x", -2.0)]
    # a candidate of the top block without a score (partial validation) leads the rest
    partial = merge_reranked(run, {"q1": {"c": 1.0, "a": 2.0}}, depth=3)
    assert [d for d, _ in partial["q1"]] == ["a", "c", "b", "d", "e"]
    assert partial["q2"] == [("x", -1.0)]


# ------------------------------------------------------------------------------------ data


def reranker_overrides(small_beir, tiny_reranker, train_file, *extra):
    return (
        "stage=train_reranker",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_reranker}",
        f"stage.datamodule.train_file={train_file}",
        f"stage.datamodule.max_length={MAX_LEN}",
        "stage.train_n_passages=4",
        "stage.module.forward_factor=2",
        "stage.datamodule.batch_size=8",
        "stage.datamodule.val_depth=10",
        "stage.module.lr=1e-3",
        "stage.module.warmup_steps=5",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        *extra,
    )


def test_datamodule_pairs_and_held_out_validation(compose, small_beir, small_beir_bm25, tiny_reranker):
    from hydra.utils import instantiate

    cfg = compose(
        *reranker_overrides(small_beir, tiny_reranker, small_beir_bm25 / "train.jsonl"),
        "data.val_split=holdout:12",
    )
    dm = instantiate(cfg.stage.datamodule, _convert_="none")
    dm.setup("fit")
    # 12 training queries are held out (the train file has examples for them), BM25 gives their run
    held = set(dm.val_queries)
    assert len(held) == 12 and held == dm.data.holdout_ids
    assert not held & {ex.query_id for ex in dm.train_dataset.examples}
    assert set(dm.val_run) <= held and set(dm.val_qrels) == held
    assert all(len(ranking) <= 10 for ranking in dm.val_run.values())
    assert len(dm.val_pairs) == sum(len(r) for r in dm.val_run.values())

    item = dm.train_dataset[0]
    batch = dm.collator([item, dm.train_dataset[1]])
    assert batch["pairs"]["input_ids"].shape[0] == 2 * 4 and batch["scores"].shape == (2, 4)
    assert batch["pairs"]["input_ids"].shape[1] <= MAX_LEN
    expected = dm.tokenizer(
        item["query"], passage_text(item["titles"][1], item["texts"][1]), max_length=MAX_LEN, truncation=True
    )["input_ids"]
    row = batch["pairs"]["input_ids"][1]
    assert row[: len(expected)].tolist() == expected
    val = next(iter(dm.val_dataloader()))
    assert val["index"].tolist() == list(range(len(val["index"])))


# ------------------------------------------------------------------------------------ end to end


def test_train_reranker_then_rerank_a_run(compose, tmp_path, small_beir, small_beir_bm25, tiny_reranker):
    test_run = small_beir_bm25 / "test.trec"
    out = tmp_path / "reranker"
    cfg = compose(
        *reranker_overrides(
            small_beir,
            tiny_reranker,
            small_beir_bm25 / "train.jsonl",
            "data.val_split=test",
            f"stage.datamodule.val_run_file={test_run}",
        ),
        output_dir=out,
    )
    run_stage(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["val"]) == {"mrr@10", "ndcg@10", "group_acc"}
    model_dir = out / "model"
    model, tokenizer = load_reranker(str(model_dir))
    assert model.config.num_labels == 1
    logged = (next(out.glob("csv/version_*/metrics.csv"))).read_text().splitlines()[0]
    assert "train/acc" in logged and "train/loss" in logged

    # stage=rerank with the saved model re-ranks the same run exactly as validation did
    depth = 10
    rerank_out = tmp_path / "rerank"
    run_stage(
        compose(
            "stage=rerank",
            "data=beir",
            f"data.root={small_beir}",
            f"stage.model={model_dir}",
            f"stage.run_file={test_run}",
            f"stage.depth={depth}",
            f"stage.max_length={MAX_LEN}",
            "stage.batch_size=16",
            "stage.interpolation=1",  # the re-ranker's score alone, as validation ranks
            output_dir=rerank_out,
        )
    )
    rr_metrics = json.loads((rerank_out / "metrics.json").read_text())
    assert rr_metrics["test"]["mrr@10"] == pytest.approx(metrics["val"]["mrr@10"], abs=1e-6)
    assert rr_metrics["test_input"]["mrr@10"] != rr_metrics["test"]["mrr@10"]
    before, after = read_run(test_run), read_run(rerank_out / "test.trec")
    assert rr_metrics["rerank"]["pairs"] == sum(min(depth, len(r)) for r in before.values())
    assert read_run(rerank_out / "test.msmarco.txt") == after
    from simlm.data.dataset import RetrievalData

    data = RetrievalData(small_beir, layout="beir")
    queries, corpus = data.queries("test"), data.corpus
    for qid, ranking in before.items():
        got = after[qid]
        head, rest = got[:depth], got[depth:]
        assert [d for d, _ in rest] == [d for d, _ in ranking[depth:]]  # the rest: below, original order
        assert {d for d, _ in head} == {d for d, _ in ranking[:depth]}
        scores = [s for _, s in got]
        assert all(x > y for x, y in zip(scores[depth - 1 :], scores[depth:]))
        passages = corpus.passages([corpus.row(d) for d, _ in head])
        direct = score_texts(
            model,
            tokenizer,
            [queries[qid]] * len(head),
            [passage_text(p.title, p.text) for p in passages],
            max_length=MAX_LEN,
        )
        assert [s for _, s in head] == pytest.approx(direct.tolist(), abs=1e-5)
        assert all(x >= y for x, y in zip(scores[:depth], scores[1:depth]))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_validation_gathers_every_ranks_pairs(
    tmp_path, small_beir, small_beir_bm25, tiny_reranker, cache_dir
):
    """2 gloo processes each score half the validation pairs; the gathered metrics equal one process's."""
    import os
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    def run(out: Path, *extra: str) -> dict:
        cmd = [
            sys.executable,
            str(PROJECT_ROOT / "run.py"),
            *reranker_overrides(small_beir, tiny_reranker, small_beir_bm25 / "train.jsonl"),
            "stage.module.lr=0.0",  # weights stay as loaded: validation must not depend on the world size
            "+trainer.limit_train_batches=2",
            f"hydra.run.dir={out}",
            *extra,
        ]
        env = {**os.environ, "SIMLM_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads((out / "metrics.json").read_text())["val"]

    single = run(tmp_path / "one")
    ddp = run(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert ddp == pytest.approx(single, abs=1e-6)


def test_group_accuracy_is_the_share_of_groups_whose_top_passage_is_a_positive():
    from simlm.modules.reranker import group_accuracy

    scores = {
        "q1": {"p": 2.0, "n1": 1.0, "n2": 0.5},  # positive on top
        "q2": {"p": 0.1, "n1": 1.0},  # a negative on top
        "q3": {"n1": 3.0, "n2": 1.0},  # no positive among the candidates: not a group
        "q4": {"a": 1.0, "b": 1.0},  # a tie goes to the lower doc id: "a", the positive
    }
    qrels = {"q1": {"p": 1}, "q2": {"p": 2, "n1": 0}, "q3": {"p": 1}, "q4": {"a": 1}}
    assert group_accuracy(scores, qrels) == pytest.approx(2 / 3)
    assert group_accuracy({}, qrels) == 0.0
