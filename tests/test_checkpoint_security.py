"""Checkpoints are data, not code: a crafted `.ckpt` or DeepSpeed file is refused before any of it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from simlm.checkpoints import (
    UnsafeCheckpointError,
    checkpoint_hparams,
    checkpoint_state_dict,
    load_checkpoint_weights,
    safe_load,
)
from simlm.stages import run_stage

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls `open(marker, "w")`: the marker file appears iff the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def tiny_state() -> dict[str, torch.Tensor]:
    return {"encoder.weight": torch.zeros(2, 2)}


def evil_ckpt(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tiny_state(), "hyper_parameters": {"lr": 1e-3, "x": Payload(marker)}}, path)
    return path


def evil_deepspeed_dir(tmp_path: Path, marker: Path, where: str) -> Path:
    """A DeepSpeed-shaped checkpoint dir whose model states (or ZeRO optimizer states) carry the payload."""
    root = tmp_path / "evil_ds.ckpt"
    (root / "checkpoint").mkdir(parents=True)
    (root / "latest").write_text("checkpoint")
    model_states = {
        "module": tiny_state(),
        "buffer_names": [],
        "param_shapes": [{"encoder.weight": torch.Size([2, 2])}],
        "shared_params": {},
        "ds_version": "0.19.8",
        "hyper_parameters": {"lr": 1e-3},
    }
    optim_states = {
        "optimizer_state_dict": {
            "zero_stage": 2,
            "partition_count": [1],
            "single_partition_of_fp32_groups": [torch.zeros(4)],
        },
        "ds_version": "0.19.8",
    }
    (model_states if where == "model" else optim_states["optimizer_state_dict"])["evil"] = Payload(marker)
    torch.save(model_states, root / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save(optim_states, root / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return root


def test_the_payload_really_runs_under_a_plain_unpickler(tmp_path):
    marker = tmp_path / "marker"
    torch.load(evil_ckpt(tmp_path, marker), weights_only=False)  # what the loaders used to do
    assert marker.exists()


LOADERS = {
    "checkpoint_state_dict": checkpoint_state_dict,
    "checkpoint_hparams": checkpoint_hparams,
    "load_checkpoint_weights": lambda p: load_checkpoint_weights(torch.nn.Linear(2, 2), p),
    "safe_load": safe_load,
}


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_refuses_a_crafted_ckpt_without_running_it(tmp_path, loader):
    marker = tmp_path / "marker"
    path = evil_ckpt(tmp_path, marker)
    with pytest.raises(
        UnsafeCheckpointError,
        match=rf"{re.escape(str(path))}: refused to load.*Unsupported global: GLOBAL [\w.]*open",
    ):
        LOADERS[loader](path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["model", "optim"])
@pytest.mark.parametrize("loader", ["checkpoint_state_dict", "checkpoint_hparams", "load_checkpoint_weights"])
def test_every_loader_refuses_a_crafted_deepspeed_checkpoint(tmp_path, loader, where):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "marker"
    path = evil_deepspeed_dir(tmp_path, marker, where)
    if loader == "checkpoint_hparams" and where == "optim":
        assert checkpoint_hparams(path) == {"lr": 1e-3}  # reads only the (clean) model states
    else:
        with pytest.raises(
            UnsafeCheckpointError, match=r"_states.pt: refused to load.*Unsupported global: GLOBAL [\w.]*open"
        ):
            LOADERS[loader](path)
    assert not marker.exists()
    from deepspeed.utils import zero_to_fp32

    assert zero_to_fp32.torch is torch  # the safe loader is swapped in only while consolidating


def test_export_stage_refuses_a_crafted_checkpoint(compose, tmp_path):
    marker = tmp_path / "marker"
    path = evil_ckpt(tmp_path, marker)
    out = tmp_path / "export" / "st"
    cfg = compose("stage=export", f"stage.source={path}", f"stage.out_dir={out}", output_dir=out.parent)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt: refused to load"):
        run_stage(cfg)
    assert not marker.exists() and not (out / "modules.json").exists()


def test_allow_listed_hyper_parameter_containers_still_load(tmp_path):
    from omegaconf import OmegaConf

    hparams = OmegaConf.create({"model_name_or_path": "m", "settings": {"pooling": "mean", "dims": [1, 2]}})
    path = tmp_path / "omegaconf.ckpt"
    torch.save({"state_dict": tiny_state(), "hyper_parameters": hparams}, path)
    loaded = checkpoint_hparams(path)
    assert loaded["model_name_or_path"] == "m" and loaded["settings"]["pooling"] == "mean"
    torch.testing.assert_close(checkpoint_state_dict(path)["encoder.weight"], torch.zeros(2, 2))


def test_nothing_turns_on_trust_remote_code():
    offenders = []
    for pattern in ("simlm/**/*.py", "conf/**/*.yaml", "run.py", "benchmarks/**/*.py"):
        for path in PROJECT_ROOT.glob(pattern):
            text = path.read_text()
            if re.search(r"trust_remote_code\s*[=:]\s*(True|true|1)", text):
                offenders.append(str(path.relative_to(PROJECT_ROOT)))
    assert not offenders


def test_deepspeed_optimizer_state_classes_are_allow_listed(tmp_path):
    """What ZeRO-2/3 optimizer states hold (fp32 CPU runs: LossScaler; fp16 GPU runs: DynamicLossScaler)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {
        "optimizer_state_dict": {
            "zero_stage": ZeroStageEnum.weights,
            "loss_scaler": DynamicLossScaler(2.0**12, 1000, 1.0, 2, False, dtype=torch.float16),
            "static": LossScaler(1.0),
            "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
        }
    }
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(state, path)
    loaded = safe_load(path)["optimizer_state_dict"]
    assert loaded["zero_stage"] == ZeroStageEnum.weights and loaded["zero_stage"] == 3
    assert loaded["loss_scaler"].cur_scale == 2.0**12 and loaded["loss_scaler"].dtype == torch.float16
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=0)
