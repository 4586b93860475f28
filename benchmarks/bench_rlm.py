"""RLM pre-training tokens/s vs a plain masked-LM step on the same encoder (MiniLM) and batch.

Every row is forward + backward + AdamW step on one pre-collated batch of demo passages (144 tokens,
30% / 50% masks), fp32 CPU. Generators are random-weight models of the stated shape (the speed does not
depend on the weights); "ELECTRA-base-generator shape" is SimLM's frozen generator (12 layers, hidden 256).
The prediction counts multiply-accumulates per token: a layer costs 4h^2 + 2hI (+ 2Lh attention), the MLM
head h^2 + hV; training costs 3x a forward pass (forward + 2x backward); the generator's head runs only at
masked positions and its decoder-side pass (and a frozen generator) is forward only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import best_of, peak_rss_mb, report

BATCH, MAX_LEN, REPEATS = 4, 144, 2


def _batch(tokenizer: Any, cache: Path) -> dict[str, torch.Tensor]:
    """Collated RLM batch of the longest demo passages (so every row has MAX_LEN tokens)."""
    from simlm.data.dataset import RetrievalData
    from simlm.data.demo import ensure_demo_dataset
    from simlm.data.rlm import RLMCollator

    corpus = RetrievalData(ensure_demo_dataset(cache), layout="beir").corpus
    texts = corpus.texts()
    rows = sorted(range(len(corpus)), key=lambda r: -len(texts[r]))[:BATCH]
    items = [{"title": p.title, "text": p.text} for p in corpus.passages(rows)]
    return RLMCollator(tokenizer, max_length=MAX_LEN, seed=0)(items)


def _layer_macs(cfg: Any, seq_len: int) -> float:
    h, inter = cfg.hidden_size, cfg.intermediate_size
    return 4 * h * h + 2 * h * inter + 2 * seq_len * h


def _head_macs(cfg: Any) -> float:
    return cfg.hidden_size * cfg.hidden_size + cfg.hidden_size * cfg.vocab_size


def predicted_ratio(
    enc_cfg: Any,
    gen_cfg: Any | None,
    decoder_layers: int,
    gen_trains: bool,
    seq_len: int,
    enc_masked: float = 0.3,
    dec_masked: float = 0.5,
) -> float:
    """Predicted RLM step cost / plain MLM step cost from the model shapes (see the module docstring).

    The generator runs its body on every position but its head only on the masked ones (fractions
    `enc_masked` / `dec_masked`); the decoder-side pass is forward only, the encoder side trains with it.
    """
    encoder = enc_cfg.num_hidden_layers * _layer_macs(enc_cfg, seq_len) + _head_macs(enc_cfg)
    decoder = decoder_layers * _layer_macs(enc_cfg, seq_len) + _head_macs(enc_cfg)
    cost = 3 * encoder + 3 * decoder
    if gen_cfg is not None:
        body, head = gen_cfg.num_hidden_layers * _layer_macs(gen_cfg, seq_len), _head_macs(gen_cfg)
        enc_pass, dec_pass = body + enc_masked * head, body + dec_masked * head
        cost += (3 if gen_trains else 1) * enc_pass + dec_pass
    return cost / (3 * encoder)


def _generator_folder(enc_cfg: Any, out: Path, layers: int, hidden: int, heads: int, inter: int) -> str:
    """Save a random-weight MLM of the given shape (same vocabulary) to use as a frozen 'pretrained' generator."""
    import copy

    from transformers import AutoModelForMaskedLM

    cfg = copy.deepcopy(enc_cfg)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size = (
        layers,
        hidden,
        heads,
        inter,
    )
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    return str(out)


def _time_steps(module: torch.nn.Module, loss_fn) -> float:
    from simlm.optim import build_optimizer

    optimizer, _ = build_optimizer(module, 1e-5, 0.0, 0, 100)

    def step() -> None:
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    seconds, _ = best_of(step, REPEATS)
    return seconds


def main() -> dict:
    from simlm.config import minilm_path
    from simlm.models.encoder import load_tokenizer
    from simlm.modules.rlm import ReplacedLMModule, load_mlm

    threads = int(os.environ.get("BENCH_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)  # BENCH_THREADS=1 gives stable ratios when other jobs share the cores
    torch.manual_seed(0)
    path = minilm_path()
    tokenizer = load_tokenizer(path)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batch = _batch(tokenizer, tmp / "cache")
        tokens = int(batch["enc_attention_mask"].sum())
        seq_len = batch["labels"].shape[1]
        fractions = [float((batch[f"{side}_labels"] >= 0).sum()) / tokens for side in ("enc", "dec")]

        mlm = load_mlm(path).train()
        enc_cfg = mlm.config
        t_mlm = _time_steps(
            mlm,
            lambda m=mlm: (
                m(
                    input_ids=batch["enc_input_ids"],
                    attention_mask=batch["enc_attention_mask"],
                    token_type_ids=batch["enc_token_type_ids"],
                    labels=batch["enc_labels"],
                ).loss
            ),
        )
        rows.append({"step": "plain MLM (encoder + head)", "tokens_per_s": tokens / t_mlm, "time_ratio": 1.0})
        mlm = None

        small = _generator_folder(enc_cfg, tmp / "gen_small", 2, 128, 2, 512)
        electra = _generator_folder(enc_cfg, tmp / "gen_electra", 12, 256, 4, 1024)
        variants = [
            ("RLM, frozen small generator (2 x 128)", {"name_or_path": small}),
            (
                "RLM, jointly trained small generator (demo recipe)",
                {"name_or_path": None, "freeze": False, "hidden_size": 128},
            ),
            ("RLM, frozen ELECTRA-base-generator shape (SimLM)", {"name_or_path": electra}),
        ]
        for name, generator in variants:
            module = ReplacedLMModule(path, decoder_layers=2, generator=generator).train()
            seconds = _time_steps(module, lambda m=module: m.compute_losses(batch)["loss"])
            rows.append(
                {
                    "step": name,
                    "tokens_per_s": tokens / seconds,
                    "time_ratio": seconds / t_mlm,
                    "predicted_ratio": predicted_ratio(
                        enc_cfg, module.generator.config, 2, module.generator_trains, seq_len, *fractions
                    ),
                    "generator_params_M": sum(p.numel() for p in module.generator.parameters()) / 1e6,
                }
            )
            del module

    from transformers import BertConfig

    base = BertConfig()  # bert-base-uncased's shape
    electra_cfg = BertConfig(hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    simlm_pred = predicted_ratio(base, electra_cfg, 2, False, MAX_LEN)
    return report(
        "rlm",
        rows,
        notes=f"MiniLM-L6-H384 encoder (22.7M params), decoder = 2 copied layers sharing its embeddings and "
        f"head, batch {BATCH} x {seq_len} tokens ({tokens} tokens), fp32, best of {REPEATS} steps after a "
        f"warm-up; predicted ratio from MACs (layers + vocabulary heads; sampling over the vocabulary not "
        f"counted). {threads} torch thread(s). SimLM's own setup (bert-base + frozen ELECTRA-base generator) predicts {simlm_pred:.2f}x "
        f"an MLM step. Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; peak RSS "
        f"{peak_rss_mb():.0f} MiB",
    )


if __name__ == "__main__":
    main()
