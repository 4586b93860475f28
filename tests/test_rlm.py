"""RLM pre-training: masking, generator sampling, decoder wiring, losses, saving, and the stage end to end."""

from __future__ import annotations

import copy
import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simlm.data.rlm import (
    RLMCollator,
    extra_mask_prob,
    mask_budget,
    split_rows,
    whole_word_mask,
    word_groups,
)
from simlm.models.encoder import load_tokenizer
from simlm.modules.rlm import DECODER_FILE, ReplacedLMModule, sample_replacements
from simlm.stages import run_stage

TRAINED_GENERATOR = {"name_or_path": None, "freeze": False, "mlm_weight": 0.2}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread (and do not suffer when the machine's cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return load_tokenizer(tiny_bert)


@pytest.fixture(scope="module")
def passages(demo_root) -> list[dict[str, str]]:
    from simlm.data.dataset import RetrievalData

    corpus = RetrievalData(demo_root, layout="beir").corpus
    return [{"title": p.title, "text": p.text} for p in corpus.passages(list(range(0, len(corpus), 8)))]


@pytest.fixture(scope="module")
def built_modules(tiny_bert) -> dict[str, ReplacedLMModule]:
    """Loaded once: the tiny encoder with the same tiny MLM as a frozen generator, or a fresh trained one."""
    torch.manual_seed(0)
    return {
        "frozen": ReplacedLMModule(str(tiny_bert), generator={"name_or_path": str(tiny_bert)}),
        "trained": ReplacedLMModule(str(tiny_bert), generator=TRAINED_GENERATOR),
    }


@pytest.fixture
def frozen(built_modules) -> ReplacedLMModule:
    return copy.deepcopy(built_modules["frozen"])


@pytest.fixture
def trained(built_modules) -> ReplacedLMModule:
    return copy.deepcopy(built_modules["trained"])


def clean_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Original ids: special tokens are never masked, so they stay in the inputs."""
    return torch.where(batch["labels"] >= 0, batch["labels"], batch["enc_input_ids"])


# ------------------------------------------------------------------------------------------ masking


def test_budget_and_whole_word_rule():
    assert [mask_budget(n, 0.3) for n in (2, 9, 10, 144)] == [1, 3, 3, 43]
    assert mask_budget(3000, 0.5) == 512 and mask_budget(1, 0.01) == 1
    tokens = ["[CLS]", "un", "##believ", "##able", "day", "[SEP]", "##x", "a", "[SEP]"]
    special = [t in ("[CLS]", "[SEP]") for t in tokens]
    assert word_groups(tokens, special) == [[1, 2, 3], [4], [6], [7]]
    groups = [[1, 2, 3], [4], [5], [6, 7]]
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        chosen = whole_word_mask(groups, 10, 0.3, rng)  # budget 3: a word that would exceed it is skipped
        assert len(chosen) <= 3
        assert all(set(g) <= set(chosen) or not set(g) & set(chosen) for g in groups)
        seen.add(tuple(chosen))
    assert (1, 2, 3) in seen and (4, 5) in seen and (4, 6, 7) in seen
    assert extra_mask_prob(0.3, 0.5) == pytest.approx(0.2 / 0.7)


def collate_many(collator: RLMCollator, passages, batch_size: int = 32):
    return [collator(passages[i : i + batch_size]) for i in range(0, len(passages), batch_size)]


def test_masking_statistics(tokenizer, passages):
    collator = RLMCollator(tokenizer, max_length=144, seed=0)
    special_ids = torch.tensor(tokenizer.all_special_ids)
    n_tokens = n_enc = n_dec = n_dec_only = n_free = n_pieces = 0
    for batch in collate_many(collator, passages):
        clean = clean_ids(batch)
        attention = batch["enc_attention_mask"].bool()
        enc, dec = batch["enc_labels"] >= 0, batch["dec_labels"] >= 0
        special = torch.isin(clean, special_ids) & attention
        assert not (enc & ~dec).any()  # encoder mask inside the decoder mask
        assert not ((enc | dec) & (special | ~attention)).any()  # specials and pads never masked
        assert torch.equal(batch["labels"], clean.masked_fill(special | ~attention, -100))
        for side, mask in (("enc", enc), ("dec", dec)):
            ids = batch[f"{side}_input_ids"]
            assert (ids[mask] == tokenizer.mask_token_id).all()  # all-[MASK] mode
            assert torch.equal(ids[~mask], clean[~mask])
            assert torch.equal(batch[f"{side}_labels"][mask], clean[mask])
        for i in range(clean.shape[0]):
            length = int(attention[i].sum())
            row = clean[i, :length].tolist()
            assert int(enc[i].sum()) <= mask_budget(length, 0.3)
            tokens = tokenizer.convert_ids_to_tokens(row)
            # whole words: a "##" piece is masked exactly when the token before it is
            pieces = [p for p in range(2, length) if tokens[p].startswith("##") and not special[i, p - 1]]
            n_pieces += len(pieces)
            for mask in (enc[i], dec[i]):
                assert all(bool(mask[p]) == bool(mask[p - 1]) for p in pieces)
        n_tokens += int(attention.sum())
        n_enc += int(enc.sum())
        n_dec += int(dec.sum())
        n_dec_only += int((dec & ~enc).sum())
        n_free += int((attention & ~special & ~enc).sum())
    assert n_tokens > 20_000 and n_pieces > 1000
    assert abs(n_enc / n_tokens - 0.3) < 0.015
    assert abs(n_dec / n_tokens - 0.5) < 0.025
    # the extra decoder mask is independent of the encoder's: P(dec | not enc) ~ (0.5 - 0.3) / (1 - 0.3)
    assert abs(n_dec_only / n_free - extra_mask_prob(0.3, 0.5)) < 0.03


def test_80_10_10_corruption_and_equal_rates(tokenizer, passages):
    collator = RLMCollator(tokenizer, all_use_mask_token=False, seed=1)
    counts = np.zeros(3)
    for batch in collate_many(collator, passages):
        clean, mask = clean_ids(batch), batch["enc_labels"] >= 0
        ids = batch["enc_input_ids"][mask]
        is_mask = ids == tokenizer.mask_token_id
        kept = ~is_mask & (ids == clean[mask])
        counts += [int(is_mask.sum()), int(kept.sum()), int((~is_mask & ~kept).sum())]
    assert np.abs(counts / counts.sum() - [0.8, 0.1, 0.1]).max() < 0.02
    same = RLMCollator(
        tokenizer, encoder_mask_prob=0.3, decoder_mask_prob=0.3, all_use_mask_token=False, seed=2
    )
    batch = same(passages[:16])
    assert torch.equal(batch["enc_input_ids"], batch["dec_input_ids"])
    assert torch.equal(batch["enc_labels"], batch["dec_labels"])


def test_split_follows_simlm():
    rows = list(range(50))
    random.Random(123).shuffle(rows)
    train, held = split_rows(50, 8)
    assert held.tolist() == rows[:8] and train.tolist() == rows[8:]
    with pytest.raises(ValueError, match="no training passage"):
        split_rows(5, 5)


# ------------------------------------------------------------------------------------------ model


def test_sampling_is_temperature_one_over_masked_positions():
    torch.manual_seed(0)
    n = 20_000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]).expand(n, 1, 5).clone()
    ids = torch.full((n, 1), 7)
    masked = torch.zeros(n, 1, dtype=torch.bool)
    masked[: n // 2] = True
    out = sample_replacements(logits[masked], ids, masked)
    assert (out[~masked] == 7).all()
    freq = torch.bincount(out[masked], minlength=5).float() / masked.sum()
    assert torch.allclose(freq, torch.softmax(logits[0, 0], -1), atol=0.015)


def test_generator_logits_at_masked_positions_match_the_full_forward(frozen):
    from transformers import ElectraConfig, ElectraForMaskedLM

    electra = ElectraForMaskedLM(
        ElectraConfig(
            vocab_size=100,
            embedding_size=16,
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).eval()
    for generator in (electra, frozen.generator.eval()):  # no dropout: two forwards to compare
        frozen.generator = generator
        ids = torch.randint(5, 100, (3, 12))
        masked = torch.rand(3, 12) < 0.4
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            assert torch.allclose(
                frozen.generator_logits(kwargs, masked), generator(**kwargs).logits[masked], atol=1e-5
            )


def test_decoder_sees_the_encoder_only_through_cls(frozen, tokenizer, passages):
    module = frozen.eval()
    batch = RLMCollator(tokenizer, seed=0)(passages[:4])
    b, length = batch["labels"].shape
    hidden = torch.randn(b, length, module.encoder.config.hidden_size, requires_grad=True)
    dec = module.decode(hidden, batch["dec_input_ids"], batch["dec_attention_mask"])
    module.token_loss(dec, batch["labels"]).backward()
    assert hidden.grad[:, 1:].abs().max() == 0
    assert (hidden.grad[:, 0].abs().sum(-1) > 0).all()
    # the decoder layers are copies, not the encoder's own layers; embeddings and head are shared
    enc_params = {p.data_ptr() for p in module.encoder.parameters()}
    assert not enc_params & {p.data_ptr() for p in module.decoder.parameters()}
    assert module.encoder.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert module.encoder.cls.predictions.transform.dense.weight.grad.abs().sum() > 0


def manual_losses(module: ReplacedLMModule, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Spec 1.4 written out with the Hugging Face models (eval mode, same RNG order as the module)."""
    labels, attention = batch["labels"], batch["enc_attention_mask"]
    replaced = {}
    gen_loss = None
    for side in ("enc", "dec"):
        ids = batch[f"{side}_input_ids"]
        logits = module.generator(
            input_ids=ids, attention_mask=attention, token_type_ids=batch[f"{side}_token_type_ids"]
        ).logits
        masked = batch[f"{side}_labels"] >= 0
        x = ids.clone()
        x[masked] = torch.multinomial(torch.softmax(logits[masked], -1), 1)[:, 0]
        replaced[side] = x
        if side == "enc":
            vocab = logits.shape[-1]
            gen_loss = F.cross_entropy(logits.view(-1, vocab), batch["enc_labels"].view(-1))
    out = module.encoder(
        input_ids=replaced["enc"],
        attention_mask=attention,
        token_type_ids=batch["enc_token_type_ids"],
        labels=labels,
        output_hidden_states=True,
    )
    bert = module.encoder.bert
    emb = bert.embeddings(input_ids=replaced["dec"], token_type_ids=torch.zeros_like(replaced["dec"]))
    h = torch.cat([out.hidden_states[-1][:, :1], emb[:, 1:]], dim=1)
    additive = (1.0 - attention[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in module.decoder:
        h = layer(h, additive)
    dec_logits = module.encoder.cls(h)
    dec_loss = F.cross_entropy(dec_logits.view(-1, dec_logits.shape[-1]), labels.view(-1))
    ratio = ((replaced["enc"] != labels) & (labels >= 0)).sum() / attention.sum()
    return {"enc_loss": out.loss, "dec_loss": dec_loss, "gen_loss": gen_loss, "replace_ratio": ratio}


@pytest.mark.parametrize("trained_generator", [False, True])
def test_losses_equal_a_manual_computation(frozen, trained, tokenizer, passages, trained_generator):
    module = (trained if trained_generator else frozen).eval()
    batch = RLMCollator(tokenizer, seed=3)(passages[:6])
    torch.manual_seed(11)
    got = module.compute_losses(batch)
    torch.manual_seed(11)
    want = manual_losses(module, batch)
    for key, value in want.items():
        assert float(got[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), key
    expected = want["enc_loss"] + want["dec_loss"] + (0.2 * want["gen_loss"] if trained_generator else 0.0)
    assert float(got["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert 0 < float(got["replace_ratio"]) < 0.3


def test_generator_runs_twice_and_a_frozen_one_gets_no_gradient(frozen, trained, tokenizer, passages):
    from simlm.optim import build_optimizer

    batch = RLMCollator(tokenizer, seed=0)(passages[:4])
    for module, trains in ((frozen, False), (trained, True)):
        calls: list[bool] = []
        module.generator.base_model.register_forward_hook(
            lambda *_, calls=calls: calls.append(torch.is_grad_enabled())
        )
        module.train()
        module.compute_losses(batch)["loss"].backward()
        # two passes: the encoder side (differentiable when the generator trains), the decoder side never
        assert calls == [trains, False]
        # both sample with dropout on, as in SimLM's trainer (a frozen one only gets no gradient)
        assert module.encoder.training and module.generator.training
        grads = [p.grad for p in module.generator.parameters()]
        if trains:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)
            assert not any(p.requires_grad for p in module.generator.parameters())
        optimizer, _ = build_optimizer(module, 1e-3, 0.0, 1, 10)
        optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert bool(optimized & {id(p) for p in module.generator.parameters()}) == trains


def test_save_and_load_give_identical_outputs(trained, tiny_bert, tokenizer, passages, tmp_path):
    from simlm.models.encoder import TextEncoder

    module = trained.eval()
    with torch.no_grad():
        for p in module.decoder.parameters():  # the decoder must come from the file, not from fresh copies
            p.add_(0.1 * torch.randn_like(p))
    batch = RLMCollator(tokenizer, seed=0)(passages[:4])
    ids, attention, types = batch["enc_input_ids"], batch["enc_attention_mask"], batch["enc_token_type_ids"]

    def outputs(m: ReplacedLMModule) -> list[torch.Tensor]:
        with torch.no_grad():
            hidden = m.encode(ids, attention, types)
            return [hidden, m.encoder(ids, attention, types).logits, m.decode(hidden, ids, attention)]

    before = outputs(module)
    out = module.save_model(tmp_path / "model", tokenizer)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", DECODER_FILE, "tokenizer.json"} <= names
    assert not any("generator" in n for n in names)
    reloaded = ReplacedLMModule(str(out), generator={"name_or_path": str(tiny_bert)}).eval()
    for a, b in zip(before, outputs(reloaded)):
        assert torch.equal(a, b)
    # the bi-encoder loads the folder with AutoModel (the MLM head and decoder are ignored)
    encoder = TextEncoder.from_pretrained(out).eval()
    with torch.no_grad():
        hidden = encoder.query_model(
            input_ids=ids, attention_mask=attention, token_type_ids=types
        ).last_hidden_state
    assert torch.equal(hidden, before[0])


def test_a_checkpoint_without_mlm_head_gets_a_fresh_one(tiny_bert, tmp_path):
    from transformers import AutoConfig, BertModel

    body = BertModel(AutoConfig.from_pretrained(tiny_bert), add_pooling_layer=False)
    body.save_pretrained(tmp_path)
    module = ReplacedLMModule(str(tmp_path), generator=TRAINED_GENERATOR)
    assert torch.equal(
        module.encoder.bert.encoder.layer[0].output.dense.weight, body.encoder.layer[0].output.dense.weight
    )
    head = module.encoder.cls.predictions
    assert head.decoder.weight is module.encoder.bert.embeddings.word_embeddings.weight  # tied
    assert torch.isfinite(head.transform.dense.weight).all() and head.transform.dense.weight.std() > 0


def test_head_lr_covers_exactly_the_random_parts(tiny_bert, tmp_path):
    """`head_lr`: the MLM head weights the checkpoint lacked and a fresh generator; the rest keep `lr`."""
    from transformers import AutoConfig, BertModel

    from simlm.optim import build_optimizer

    BertModel(AutoConfig.from_pretrained(tiny_bert), add_pooling_layer=False).save_pretrained(tmp_path)
    module = ReplacedLMModule(str(tmp_path), generator=TRAINED_GENERATOR, lr=1e-5, head_lr=1e-3)
    fresh = {name for name in module.param_lrs if name.startswith("encoder.")}
    assert fresh and all(name.startswith("encoder.cls.predictions.") for name in fresh)
    assert "encoder.cls.predictions.transform.dense.weight" in fresh
    generator = {f"generator.{name}" for name, _ in module.generator.named_parameters()}
    assert generator <= set(module.param_lrs)
    optimizer, _ = build_optimizer(module, 1e-5, 0.0, 1, 10, param_lrs=module.param_lrs)
    lr_of = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    params = dict(module.named_parameters())
    assert lr_of[id(params["encoder.cls.predictions.transform.dense.weight"])] == 1e-3
    assert lr_of[id(params["encoder.bert.encoder.layer.0.output.dense.weight"])] == 1e-5
    # a checkpoint with its head and a pretrained generator: nothing is random, nothing gets head_lr
    whole = ReplacedLMModule(str(tiny_bert), generator={"name_or_path": str(tiny_bert)}, head_lr=1e-3)
    assert whole.param_lrs == {}


# ------------------------------------------------------------------------------------------ stage


def read_csv_metrics(out: Path) -> list[dict[str, str]]:
    (path,) = out.glob("csv/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_frozen_generator_can_sample_in_eval_mode(tiny_bert):
    module = ReplacedLMModule(str(tiny_bert), generator={"name_or_path": str(tiny_bert), "train_mode": False})
    module.train()
    assert module.encoder.training and not module.generator.training


def test_mlm_control_is_plain_masked_lm_of_the_encoder(tiny_bert, tokenizer, passages, tmp_path):
    """objective=mlm: CE at the masked positions of the [MASK]ed input; no generator, no decoder saved."""
    module = ReplacedLMModule(str(tiny_bert), objective="mlm").eval()
    assert module.generator is None and module.decoder is None
    batch = RLMCollator(tokenizer, seed=3)(passages[:6])
    got = module.compute_losses(batch)
    logits = module.encoder(
        input_ids=batch["enc_input_ids"],
        attention_mask=batch["enc_attention_mask"],
        token_type_ids=batch["enc_token_type_ids"],
    ).logits
    want = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch["enc_labels"].view(-1))
    assert (batch["enc_labels"] >= 0).sum() > 0
    assert float(got["loss"]) == pytest.approx(float(want), rel=1e-5)
    module.save_model(tmp_path / "mlm", tokenizer)
    assert not (tmp_path / "mlm" / DECODER_FILE).exists()
    with pytest.raises(ValueError, match="stage.module.objective"):
        ReplacedLMModule(str(tiny_bert), objective="electra")


def test_pretrain_then_finetune_a_biencoder(compose, tmp_path, small_beir, small_beir_bm25, tiny_bert):
    from hydra.utils import instantiate

    rlm_out = tmp_path / "rlm"
    overrides = [
        "stage=rlm",
        "data=beir",
        f"data.root={small_beir}",
        f"model.name_or_path={tiny_bert}",
        "stage.module.generator.name_or_path=null",
        "stage.module.generator.freeze=false",
        "stage.module.lr=2e-3",
        "stage.module.warmup_steps=2",
        "stage.datamodule.batch_size=16",
        "stage.datamodule.max_length=64",
        "stage.datamodule.num_eval_samples=32",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=8",
        "trainer.log_every_n_steps=1",
    ]
    cfg = compose(*overrides, output_dir=rlm_out)
    dm = instantiate(cfg.stage.datamodule, _convert_="none")
    dm.setup("fit")
    n = len(dm.corpus)
    assert len(dm.val_dataset) == 32 and len(dm.train_dataset) == n - 32
    assert not set(dm.val_dataset.rows.tolist()) & set(dm.train_dataset.rows.tolist())

    run_stage(cfg)
    metrics = json.loads((rlm_out / "metrics.json").read_text())
    assert {"loss", "enc_loss", "dec_loss", "gen_loss", "replace_ratio"} <= set(metrics["val"])
    rows = [r for r in read_csv_metrics(rlm_out) if r.get("train/loss")]
    assert {"train/enc_loss", "train/dec_loss", "train/gen_loss", "train/replace_ratio"} <= set(rows[0])
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3])
    model_dir = rlm_out / "model"
    assert (model_dir / DECODER_FILE).is_file()

    bi_out = tmp_path / "biencoder"
    run_stage(
        compose(
            "stage=biencoder",
            "data=beir",
            f"data.root={small_beir}",
            f"model.name_or_path={model_dir}",
            f"stage.datamodule.train_file={small_beir_bm25 / 'train.jsonl'}",
            "stage.train_n_passages=4",
            "stage.datamodule.batch_size=8",
            "stage.module.lr=1e-3",
            "stage.module.warmup_steps=5",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=6",
            output_dir=bi_out,
        )
    )
    bi_metrics = json.loads((bi_out / "metrics.json").read_text())
    assert bi_metrics["test"]["num_queries"] == 40 and "ndcg@10" in bi_metrics["test"]
