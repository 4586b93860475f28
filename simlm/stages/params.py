"""Stage parameters, checked once before a stage runs: types and ranges, one clear error naming the key.

Each stage module declares `PARAMS`, a dict of `stage.<key>` (dotted for nested keys) -> `Check`;
`check_stage_params(cfg)` (called by `run_stage`) reads the module of `cfg.stage.entry`, checks every
declared key, `trainer.devices` and `data.val_split`, and raises `ParamError`, e.g.
`stage.top_k must be a positive integer, got 'abc'`. Keys a stage does not declare are not checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "BOOL",
    "NON_EMPTY_TEXT",
    "NON_NEGATIVE_INT",
    "PATH",
    "POSITIVE_INT",
    "SPLITS",
    "TAG",
    "Check",
    "ParamError",
    "check_data",
    "check_devices",
    "check_params",
    "check_stage_params",
    "integer",
    "number",
    "one_of",
    "optional",
]


class ParamError(ValueError):
    """A stage parameter of the wrong type or out of range; `key` is its dotted config key."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Check:
    """`what` a valid value is (in words, for the error) and the test `ok(value) -> bool`."""

    what: str
    ok: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(min: int | None = None, max: int | None = None) -> Check:
    """An int (not a bool) in `[min, max]`."""
    if min == 1 and max is None:
        what = "a positive integer"
    elif min == 0 and max is None:
        what = "a non-negative integer"
    elif min is not None and max is not None:
        what = f"an integer from {min} to {max}"
    elif min is not None:
        what = f"an integer >= {min}"
    else:
        what = "an integer"
    return Check(
        what,
        lambda v: _is_int(v) and (min is None or v >= min) and (max is None or v <= max),
    )


def number(min: float | None = None, max: float | None = None) -> Check:
    """An int or float (not a bool) in `[min, max]`."""
    if min is not None and max is not None:
        what = f"a number from {min} to {max}"
    elif min is not None:
        what = f"a number >= {min}"
    else:
        what = "a number"
    return Check(what, lambda v: _is_number(v) and (min is None or v >= min) and (max is None or v <= max))


def one_of(*choices: Any) -> Check:
    return Check("one of " + ", ".join(repr(c) for c in choices), lambda v: v in choices)


def optional(check: Check) -> Check:
    """`check`, or null."""
    return Check(f"{check.what} or null", lambda v: v is None or check.ok(v))


POSITIVE_INT = integer(min=1)
NON_NEGATIVE_INT = integer(min=0)
BOOL = Check("true or false", lambda v: isinstance(v, bool))
NON_EMPTY_TEXT = Check("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
PATH = Check("a path (a non-empty string)", NON_EMPTY_TEXT.ok)
TAG = Check(
    "a non-empty string without spaces", lambda v: isinstance(v, str) and v != "" and v.split() == [v]
)
SPLITS = Check(
    "a split name or a non-empty list of split names",
    lambda v: (
        NON_EMPTY_TEXT.ok(v)
        or (isinstance(v, (list, tuple)) and len(v) > 0 and all(NON_EMPTY_TEXT.ok(s) for s in v))
    ),
)

# SimLM's hard-negative rule (simlm.retrieval.mining.MiningConfig), shared by stage=bm25 and stage=mine
MINING_PARAMS: dict[str, Check] = {
    "depth": POSITIVE_INT,
    "num_negatives": NON_NEGATIVE_INT,
    "min_random": NON_NEGATIVE_INT,
    "skip_top": NON_NEGATIVE_INT,
    "margin": optional(number()),
    "min_positive_grade": integer(),
}


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    )


_MISSING = object()


def _lookup(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, (DictConfig, Mapping)) or part not in node:
            return _MISSING
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, part):
            return _MISSING
        node = node[part]
    return node


def check_params(section: Any, schema: Mapping[str, Check], prefix: str = "stage") -> None:
    """Raise `ParamError` for the first key of `schema` whose value in `section` fails its check.

    Keys absent from `section` (or `???`, which reading reports by itself) are skipped.
    """
    for key, check in schema.items():
        value = _lookup(section, key)
        if value is _MISSING:
            continue
        value = _plain(value)
        if not check.ok(value):
            raise ParamError(f"{prefix}.{key} must be {check.what}, got {value!r}", key=f"{prefix}.{key}")


def _devices_ok(value: Any) -> bool:
    if value == "auto":
        return True
    if _is_int(value):
        return value >= 1 or value == -1
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(_is_int(d) and d >= 0 for d in value)
    if isinstance(value, str):  # Lightning's "2", "-1", "auto"; "0,1" or "0," name device indices
        text = value.strip()
        if "," in text:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            return len(parts) > 0 and all(p.isdigit() for p in parts)
        return text == "-1" or (text.isdigit() and int(text) >= 1)
    return False


DEVICES = Check("a positive integer, -1 (all), 'auto', or a non-empty list of device indices", _devices_ok)


def check_devices(cfg: Any) -> None:
    """`trainer.devices` (every stage reads it: Lightning for training, the inference runtime otherwise)."""
    trainer = cfg.get("trainer") if isinstance(cfg, (DictConfig, Mapping)) else None
    if trainer is not None:
        check_params(trainer, {"devices": DEVICES}, prefix="trainer")


def check_data(cfg: Any) -> None:
    """`data.val_split` (every stage reads the validation protocol: `simlm.data.validation`)."""
    from simlm.data.validation import parse_val_split

    data = cfg.get("data") if isinstance(cfg, (DictConfig, Mapping)) else None
    value = _lookup(data, "val_split") if data is not None else _MISSING
    if value is _MISSING:
        return
    value = _plain(value)
    try:
        for option in value.split("|") if isinstance(value, str) else [value]:  # alternatives a|b
            parse_val_split(option)
    except ValueError as e:
        raise ParamError(str(e), key="data.val_split") from None


def check_stage_params(cfg: DictConfig) -> None:
    """Check `trainer.devices`, `data.val_split` and the `PARAMS` the module of `cfg.stage.entry`
    declares, before it runs."""
    check_devices(cfg)
    check_data(cfg)
    module_name = str(cfg.stage.entry).rpartition(".")[0]
    schema = getattr(importlib.import_module(module_name), "PARAMS", None)
    if schema:
        check_params(cfg.stage, schema, prefix="stage")
