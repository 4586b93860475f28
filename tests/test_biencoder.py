"""Bi-encoder: SimLM group sampling, the lr schedule, and the stage end to end (train, mine, train again)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from simlm.data.corpus import Corpus, Passage
from simlm.data.formats import ScoredDocs, TrainingExample, read_examples
from simlm.data.sampling import sample_group
from simlm.optim import warmup_decay_factor
from simlm.stages import run_stage


def example(n_pos: int, n_neg: int) -> TrainingExample:
    return TrainingExample(
        "q1",
        "query",
        ScoredDocs([f"p{i}" for i in range(n_pos)], [float(i) for i in range(n_pos)]),
        ScoredDocs([f"n{i}" for i in range(n_neg)], [float(-i) for i in range(n_neg)]),
    )


@pytest.mark.parametrize(("n_pos", "n_neg", "n"), [(3, 10, 4), (1, 15, 16), (2, 7, 4)])
def test_group_sampling_follows_simlm_rule(n_pos, n_neg, n):
    ex = example(n_pos, n_neg)
    for seed in (0, 1234):
        seen = set()
        for epoch in range(6):
            group = sample_group(ex, n, epoch, seed, corpus=None)
            offset = epoch + seed
            # spec 2.2, written out: positive = positives[offset mod |P|],
            # negatives = negatives[(offset * (n-1) + i) mod |N|] for i in 0..n-2
            assert group.doc_ids[0] == f"p{offset % n_pos}"
            assert group.doc_ids[1:] == [f"n{(offset * (n - 1) + i) % n_neg}" for i in range(n - 1)]
            assert group.scores == [float(offset % n_pos)] + [
                -float((offset * (n - 1) + i) % n_neg) for i in range(n - 1)
            ]
            seen |= set(group.doc_ids[1:])
        assert len(seen) == min(n_neg, 6 * (n - 1))  # the window walks the list across epochs


def test_group_sampling_fills_short_lists_with_random_passages():
    corpus = Corpus.from_passages(
        Passage(d, "", d) for d in [*(f"p{i}" for i in range(2)), "n0", *(f"x{i}" for i in range(50))]
    )
    group = sample_group(example(2, 1), 8, epoch=0, seed=3, corpus=corpus)
    assert group.doc_ids[:2] == ["p1", "n0"] and group.n_random == 6
    fill = group.doc_ids[2:]
    assert len(set(fill)) == 6 and all(d.startswith("x") for d in fill)
    assert all(math.isnan(s) for s in group.scores[2:])
    assert sample_group(example(2, 1), 8, epoch=0, seed=3, corpus=corpus) == group
    assert sample_group(example(2, 1), 8, epoch=1, seed=3, corpus=corpus).doc_ids[2:] != fill
    with pytest.raises(ValueError, match="corpus"):
        sample_group(example(1, 1), 4, 0, 0, corpus=None)


def test_warmup_then_linear_decay():
    # DeepSpeed's log warmup: lr_factor = log(step + 1) / log(warmup)
    assert warmup_decay_factor(0, 100, 1000, "log") == 0.0
    assert warmup_decay_factor(9, 100, 1000, "log") == pytest.approx(math.log(10) / math.log(100))
    assert warmup_decay_factor(99, 100, 1000, "log") == pytest.approx(1.0)
    assert warmup_decay_factor(9, 100, 1000, "linear") == pytest.approx(0.1)
    assert warmup_decay_factor(100, 100, 1000) == pytest.approx(1.0)
    assert warmup_decay_factor(550, 100, 1000) == pytest.approx(0.5)
    assert warmup_decay_factor(1000, 100, 1000) == 0.0
    with pytest.raises(ValueError):
        warmup_decay_factor(0, 10, 100, "cosine")


def biencoder_overrides(small_beir, tiny_bert, train_file, *extra):
    return (
        "stage=biencoder",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        "model.pooling=cls",  # SimLM's settings
        "model.passage_format=pair",
        f"stage.datamodule.train_file={train_file}",
        "stage.train_n_passages=4",
        "stage.datamodule.batch_size=8",
        "stage.module.lr=1e-3",
        "stage.module.warmup_steps=5",
        "stage.module.temperature=0.05",
        "trainer.max_epochs=2",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        *extra,
    )


def test_datamodule_window_moves_with_the_epoch(compose, small_beir, small_beir_bm25, tiny_bert):
    from hydra.utils import instantiate

    cfg = compose(*biencoder_overrides(small_beir, tiny_bert, small_beir_bm25 / "train.jsonl"))
    dm = instantiate(cfg.stage.datamodule, _convert_="none")
    dm.setup("fit")
    ds = dm.train_dataset
    first = ds[0]
    ds.set_epoch(1)
    second = ds[0]
    assert first["texts"][0] == second["texts"][0] or len(ds.examples[0].positives.doc_ids) > 1
    assert first["texts"][1:] != second["texts"][1:]
    # validation uses the data set's dev qrels (small_beir has a dev split)
    assert len(dm.val_queries) == 40
    batch = next(iter(dm.train_dataloader()))
    assert batch["query"]["input_ids"].shape[0] == 8
    assert batch["passage"]["input_ids"].shape[0] == 8 * 4
    assert batch["passage"]["input_ids"].shape[1] <= 144 and batch["query"]["input_ids"].shape[1] <= 32


def read_csv_metrics(out: Path) -> list[dict[str, str]]:
    (path,) = out.glob("csv/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_mine_and_train_again(compose, tmp_path, small_beir, small_beir_bm25, tiny_bert):
    from simlm.data.dataset import RetrievalData
    from simlm.evaluation import evaluate_run
    from simlm.models.encoder import TextEncoder, load_tokenizer
    from simlm.retrieval.dense import dense_retrieve

    out1 = tmp_path / "retriever1"
    cfg = compose(
        *biencoder_overrides(
            small_beir,
            tiny_bert,
            small_beir_bm25 / "train.jsonl",
            "stage.callbacks.negative_mining.enabled=true",
            "stage.callbacks.negative_mining.num_negatives=30",
        ),
        output_dir=out1,
    )
    run_stage(cfg)
    metrics = json.loads((out1 / "metrics.json").read_text())
    assert (
        {"val", "test"} <= set(metrics)
        and "ndcg@10" in metrics["val"]
        and metrics["test"]["num_queries"] == 40
    )

    # the model learns: training loss goes down
    rows = [r for r in read_csv_metrics(out1) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) >= 4 and np.mean(losses[-3:]) < np.mean(losses[:3])

    # the saved Hugging Face folder reproduces the stage's test metrics
    model_dir = out1 / "model"
    assert json.loads((model_dir / "simlm_retrieval.json").read_text())["pooling"] == "cls"
    data = RetrievalData(small_beir, layout="beir")
    encoder = TextEncoder.from_pretrained(model_dir)
    run = dense_retrieve(encoder, load_tokenizer(model_dir), data.corpus, data.queries("test"), top_k=1000)
    assert evaluate_run(run, data.qrels("test"))["ndcg@10"] == pytest.approx(
        metrics["test"]["ndcg@10"], abs=1e-6
    )

    # mined negatives: valid SimLM examples, judged positives excluded
    mined = read_examples(out1 / "mined" / "train.jsonl", doc_ids=data.corpus)
    train_qrels = data.qrels("train")
    assert len(mined) == 150
    for ex in mined:
        assert not set(ex.negatives.doc_ids) & set(train_qrels[ex.query_id])
        assert len(ex.negatives.doc_ids) == 30

    # Retriever 2 trains on them
    out2 = tmp_path / "retriever2"
    run_stage(
        compose(
            *biencoder_overrides(
                small_beir, tiny_bert, out1 / "mined" / "train.jsonl", "trainer.max_epochs=1"
            ),
            output_dir=out2,
        )
    )
    assert "test" in json.loads((out2 / "metrics.json").read_text())


def test_resume_from_last_checkpoint(compose, tmp_path, small_beir, small_beir_bm25, tiny_bert):
    out = tmp_path / "run"
    base = biencoder_overrides(
        small_beir, tiny_bert, small_beir_bm25 / "train.jsonl", "stage.final_eval.enabled=false"
    )
    run_stage(compose(*base, "trainer.max_epochs=1", output_dir=out))
    last = out / "checkpoints" / "last.ckpt"
    import torch

    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 0 and first["global_step"] == 150 // 8  # full batches only
    run_stage(compose(*base, "trainer.max_epochs=2", f"stage.ckpt_path={last}", output_dir=out))
    resumed = torch.load(last, weights_only=False)
    # continued from step 18 (optimizer, scheduler and epoch restored), not restarted from 0
    assert resumed["global_step"] == 2 * first["global_step"]
    assert resumed["lr_schedulers"][0]["last_epoch"] == 2 * first["global_step"]


def test_missing_train_file_is_explained(compose, small_beir, tiny_bert):
    cfg = compose(*biencoder_overrides(small_beir, tiny_bert, "null"))
    with pytest.raises(FileNotFoundError, match="stage=bm25"):
        run_stage(cfg)
