"""Bi-encoder training steps/s: the Lightning stage (data loading included) vs a hand-written PyTorch loop.

Same model (MiniLM), same batches (8 queries x 4 passages, 144 tokens), same loss, AdamW, fp32 CPU.
The reference loop gets its batches pre-tokenised, so the ratio is what Lightning + data loading cost.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, report

STEPS, WARMUP, BATCH, N_PASSAGES = 12, 2, 8, 4


def _data(tmp: Path) -> tuple[Path, str]:
    """Demo data + BM25 negatives (built into `tmp`)."""
    from hydra import compose, initialize_config_dir

    from simlm.config import register_resolvers
    from simlm.stages import run_stage

    register_resolvers()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=[
                "stage=bm25",
                "data=demo",
                f"paths.output_dir={tmp}",
                "stage.negatives.mining.num_negatives=20",
            ],
        )
    run_stage(cfg)
    return tmp / "train.jsonl", str(cfg.data.cache_dir)


class StepTimer:
    """Lightning callback timing optimizer steps after a warm-up."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        class _Timer(pl.Callback):
            def __init__(self, outer):
                self.outer = outer

            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == WARMUP:
                    self.outer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == WARMUP + STEPS:
                    self.outer.seconds = time.perf_counter() - self.outer.start

        self.callback = _Timer(self)
        self.start = 0.0
        self.seconds = float("nan")


def main() -> dict:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from simlm.config import minilm_path
    from simlm.data.datamodules import BiEncoderDataModule
    from simlm.losses import contrastive_loss
    from simlm.modules.biencoder import BiEncoderModule

    torch.manual_seed(0)
    model_path = minilm_path()
    settings = {"pooling": "cls", "p_max_len": 144, "q_max_len": 32}
    with tempfile.TemporaryDirectory() as tmp:
        train_file, cache_dir = _data(Path(tmp))
        data_cfg = OmegaConf.create(
            {
                "layout": "demo",
                "root": None,
                "cache_dir": cache_dir,
                "task": "ir",
                "train_split": "train",
                "val_split": None,
            }
        )
        dm = BiEncoderDataModule(
            data_cfg,
            model_path,
            settings,
            str(train_file),
            batch_size=BATCH,
            train_n_passages=N_PASSAGES,
        )
        dm.setup("fit")
        batches = [b for b, _ in zip(dm.train_dataloader(), range(STEPS + WARMUP))]

        # reference: the same forward/backward/step in a plain loop over pre-built batches
        module = BiEncoderModule(model_path, settings, lr=2e-5, warmup_steps=0)
        encoder = module.encoder
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=2e-5)
        for i, batch in enumerate(batches):
            if i == WARMUP:
                start = time.perf_counter()
            q = encoder.encode(batch["query"], is_query=True)
            p = encoder.encode(batch["passage"], is_query=False)
            loss, _ = contrastive_loss(q, p, N_PASSAGES, 0.02)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t_ref = time.perf_counter() - start

        timer = StepTimer()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=STEPS + WARMUP,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            callbacks=[timer.callback],
        )
        trainer.fit(BiEncoderModule(model_path, settings, lr=2e-5, warmup_steps=0), datamodule=dm)
        t_ours = timer.seconds

    rows = [
        {
            "loop": "hand-written PyTorch (pre-tokenised batches)",
            "steps_per_s": STEPS / t_ref,
            "ratio_time": 1.0,
        },
        {
            "loop": "simlm BiEncoderModule + Lightning + data loading",
            "steps_per_s": STEPS / t_ours,
            "ratio_time": t_ours / t_ref,
        },
    ]
    return report(
        "train",
        rows,
        notes=f"MiniLM, {BATCH} queries x {N_PASSAGES} passages, 144 tokens, fp32, {STEPS} timed steps after "
        f"{WARMUP}; overhead {100 * (t_ours / t_ref - 1):+.1f}%; peak RSS {peak_rss_mb():.0f} MiB",
    )


if __name__ == "__main__":
    main()
