"""The validation protocol: `data.val_split` (a dev split or `holdout:<n|fraction>`), resolved once in the
data layer, held out of every stage's training data, and searched and evaluated like any split."""

from __future__ import annotations

import json

import pytest
from hydra.utils import instantiate

from simlm.data.dataset import RetrievalData
from simlm.data.formats import read_examples, read_run
from simlm.data.validation import HOLDOUT, choose_val_split, holdout_order, parse_val_split
from simlm.evaluation import evaluate
from simlm.stages import run_stage
from simlm.stages.params import ParamError

# ------------------------------------------------------------------------------------ the setting


@pytest.mark.parametrize(
    ("text", "split", "size"),
    [("dev", "dev", None), ("holdout:100", None, 100), ("holdout:0.25", None, 0.25), ("holdout:1", None, 1)],
)
def test_val_split_syntax(text, split, size):
    spec = parse_val_split(text)
    assert (spec.split, spec.size) == (split, size)
    assert spec.name == (split or HOLDOUT)
    assert parse_val_split(None) is None


@pytest.mark.parametrize(
    "bad", ["holdout:abc", "holdout:0", "holdout:1.5", "holdout:", "holdout:-3", "", " dev"]
)
def test_a_bad_val_split_names_the_key_before_anything_runs(bad, compose, tmp_path, small_beir):
    with pytest.raises(ValueError, match="data.val_split must be"):
        parse_val_split(bad)
    out = tmp_path / "out"
    cfg = compose(
        "stage=bm25", "data=beir", f"data.root={small_beir}", f"data.val_split='{bad}'", output_dir=out
    )
    with pytest.raises(ParamError, match=r"data.val_split must be a split name .* got") as err:
        run_stage(cfg)
    assert err.value.key == "data.val_split"
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_alternatives_take_the_first_split_the_data_set_has(small_beir, tmp_path):
    has = {"dev"}.__contains__
    assert choose_val_split("dev|holdout:0.1", has, lambda: 100) == "dev"
    assert choose_val_split("nodev|holdout:0.1", has, lambda: 100) == "holdout:0.1"
    assert choose_val_split("dev", has) == "dev" and choose_val_split(None, has) is None
    # none usable (no such split; a holdout that would leave nothing to train on): the first is kept,
    # and stages treat it as a named split without judgements
    assert choose_val_split("a|b", has) == "a"
    assert choose_val_split("nodev|holdout:0.1", has, lambda: 1) == "nodev"
    assert choose_val_split("nodev|holdout:5|holdout:0.5", has, lambda: 4) == "holdout:0.5"
    with pytest.raises(ValueError, match="data.val_split must be"):
        choose_val_split("dev|holdout:0", has)
    # data=beir's default: a collection's dev split, else a held-out tenth of its training queries
    assert RetrievalData(small_beir, val_split="dev|holdout:0.1").val_split == "dev"
    no_dev = tmp_path / "no-dev"
    (no_dev / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        (no_dev / name).write_bytes((small_beir / name).read_bytes())
    data = RetrievalData(no_dev, val_split="dev|holdout:0.1")
    assert data.val_split == HOLDOUT and data.val_spec.text == "holdout:0.1"
    assert len(data.holdout_ids) == 15  # a tenth of the 150 training queries


# ------------------------------------------------------------------------------------ the data layer


def holdout_data(root, size: str = "holdout:12") -> RetrievalData:
    return RetrievalData(root, layout="beir", val_split=size)


def test_holdout_is_a_deterministic_slice_the_training_split_loses(small_beir):
    plain = RetrievalData(small_beir, layout="beir")
    train = plain.qrels("train")
    data = holdout_data(small_beir)
    held = data.holdout_ids
    assert len(held) == 12 and held == holdout_data(small_beir).holdout_ids  # the same slice every time
    assert held == set(sorted(train, key=holdout_order)[:12])  # the first 12 in sha256 order of the ids
    assert data.val_split == HOLDOUT and data.has_validation
    # the held-out slice is a split of its own, judged as in the training qrels ...
    assert set(data.queries(HOLDOUT)) == held and data.qrels(HOLDOUT) == {q: train[q] for q in held}
    # ... and the training split no longer has it, in queries and in judgements
    assert set(data.queries("train")) == set(plain.queries("train")) - held
    assert set(data.qrels("train")) == set(train) - held
    assert data.validation.held_out == held and data.validation_ids == held
    # a fraction of the judged training queries, rounded
    assert len(holdout_data(small_beir, "holdout:0.1").holdout_ids) == round(0.1 * len(train))
    # other splits are untouched, and a dev split holds nothing out
    assert data.qrels("test") == plain.qrels("test")
    dev = RetrievalData(small_beir, layout="beir", val_split="dev")
    assert dev.holdout_ids == frozenset() and dev.validation.qrels == plain.qrels("dev")
    assert dev.qrels("train") == train
    # evaluation of a run of the held-out queries
    run = {q: [(d, 1.0) for d in judged] for q, judged in data.qrels(HOLDOUT).items()}
    assert evaluate(run, data, HOLDOUT)["recall@100"] == pytest.approx(1.0)


def test_holding_out_every_training_query_or_naming_a_split_without_judgements_fails_clearly(small_beir):
    with pytest.raises(ValueError, match=r"data.val_split='holdout:150' holds out 150 of the 150"):
        _ = holdout_data(small_beir, "holdout:150").holdout_ids
    with pytest.raises(ValueError, match=r"data.val_split='train' is the training split"):
        RetrievalData(small_beir, layout="beir", val_split="train")
    data = RetrievalData(small_beir, layout="beir", val_split="nodev")
    assert not data.has_validation
    with pytest.raises(ValueError, match=r"data.val_split='nodev'.*no judgements.*holdout:<n or fraction>"):
        _ = data.validation


# ------------------------------------------------------------------------------------ the stages


def test_no_stage_trains_on_held_out_queries(compose, tmp_path, small_beir, small_beir_bm25, tiny_bert):
    """bm25 mines no example for them and writes their run; a training file that has examples for them
    (one made without the holdout) loses them; mine and teacher scores skip them too."""
    holdout = ("data=beir", f"data.root={small_beir}", "data.val_split=holdout:12")
    held = holdout_data(small_beir).holdout_ids
    bm25_out = tmp_path / "bm25"
    run_stage(compose("stage=bm25", *holdout, "stage.negatives.mining.num_negatives=20", output_dir=bm25_out))
    mined = {ex.query_id for ex in read_examples(bm25_out / "train.jsonl")}
    assert mined and not mined & held
    assert set(read_run(bm25_out / f"{HOLDOUT}.trec")) == held  # the validation run, next to test's
    metrics = json.loads((bm25_out / "metrics.json").read_text())
    assert list(metrics) == [HOLDOUT, "test"] and metrics[HOLDOUT]["num_queries"] == 12

    unfiltered = small_beir_bm25 / "train.jsonl"  # made with the dev split: has examples of `held`
    assert held <= {ex.query_id for ex in read_examples(unfiltered)}
    cfg = compose(
        "stage=biencoder",
        *holdout,
        f"model.name_or_path={tiny_bert}",
        f"stage.datamodule.train_file={unfiltered}",
    )
    dm = instantiate(cfg.stage.datamodule, _convert_="none")
    dm.setup("fit")
    assert set(dm.val_queries) == held and set(dm.val_qrels) == held
    assert not held & {ex.query_id for ex in dm.train_dataset.examples}
    assert not held & set(dm.train_qrels())

    mine_out = tmp_path / "mine"
    run_stage(
        compose(
            "stage=mine",
            *holdout,
            f"stage.run_file={small_beir_bm25 / 'train.trec'}",
            "stage.mining.num_negatives=20",
            output_dir=mine_out,
        )
    )
    assert not held & {ex.query_id for ex in read_examples(mine_out / "train.jsonl")}

    teacher_out = tmp_path / "teacher"
    run_stage(
        compose(
            "stage=teacher_scores",
            *holdout,
            f"stage.model={tiny_bert}",  # a fresh head: any scores do
            f"stage.examples_file={unfiltered}",
            "stage.num_negatives=1",
            "stage.max_length=32",
            output_dir=teacher_out,
        )
    )
    scored = {ex.query_id for ex in read_examples(teacher_out / "kd_train.jsonl")}
    assert scored == {ex.query_id for ex in read_examples(unfiltered)} - held


def test_the_holdout_follows_the_data_set_not_the_training_file(
    compose, tmp_path, small_beir, small_beir_bm25, tiny_bert
):
    """The slice is chosen among the training split's judged queries, so a training file with fewer
    queries (every other one here) validates on the same slice as the full file: the same for every stage."""
    from simlm.data.formats import write_examples

    examples = read_examples(small_beir_bm25 / "train.jsonl")
    half = tmp_path / "half.jsonl"
    write_examples(half, examples[::2])
    held = holdout_data(small_beir).holdout_ids
    assert not held <= {ex.query_id for ex in examples[::2]}  # the half file lacks some of them
    for train_file in (small_beir_bm25 / "train.jsonl", half):
        cfg = compose(
            "stage=biencoder",
            "data=beir",
            f"data.root={small_beir}",
            "data.val_split=holdout:12",
            f"model.name_or_path={tiny_bert}",
            f"stage.datamodule.train_file={train_file}",
        )
        dm = instantiate(cfg.stage.datamodule, _convert_="none")
        dm.setup("fit")
        assert set(dm.val_queries) == held


def test_training_without_judgements_for_the_val_split_fails_naming_the_key(
    compose, small_beir, small_beir_bm25, tiny_bert
):
    cfg = compose(
        "stage=biencoder",
        "data=beir",
        f"data.root={small_beir}",
        "data.val_split=nodev",
        f"model.name_or_path={tiny_bert}",
        f"stage.datamodule.train_file={small_beir_bm25 / 'train.jsonl'}",
    )
    dm = instantiate(cfg.stage.datamodule, _convert_="none")
    with pytest.raises(ValueError, match=r"data.val_split='nodev'.*holdout:100"):
        dm.setup("fit")


def test_the_removed_holdout_queries_setting_says_what_replaced_it(compose, small_beir, tiny_bert):
    cfg = compose(
        "stage=biencoder", "data=beir", f"data.root={small_beir}", f"model.name_or_path={tiny_bert}"
    )
    with pytest.raises(Exception, match=r"holdout_queries=12 was removed.*data.val_split=holdout:100"):
        instantiate(cfg.stage.datamodule, holdout_queries=12, _convert_="none")
