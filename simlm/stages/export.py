"""`stage=export`: a trained bi-encoder as a Hugging Face folder that sentence-transformers loads as is.

Sources (`stage.source`): a model folder (with `simlm_retrieval.json`), a run dir holding `model/`, a
Lightning `.ckpt` file, or a DeepSpeed checkpoint directory (consolidated with zero_to_fp32). Checkpoints
name their base model and retrieval settings in their hyper-parameters; without them the `model` group
supplies both. A model folder follows `stage=encode`'s precedence (`load_encoder`): its saved
`simlm_retrieval.json` wins, else the `model` group's pooling, lengths, prefixes and passage format
(e.g. `model.pooling=mean` for a plain Hugging Face folder). The log says which settings were used.

The output is the usual folder (weights, tokenizer, `simlm_retrieval.json`: `stage=encode` and
`load_encoder` read it) plus sentence-transformers module files in the classic layout every version reads:
`modules.json`, `sentence_bert_config.json`, `1_Pooling/config.json`, optional `2_Dense/` (the linear
pooler) and `*_Normalize`, and `config_sentence_transformers.json` with the query/passage prefixes as the
`query`/`document` prompts.

What sentence-transformers reproduces (atol 1e-5, tests/test_export.py):
- queries: `encode_query(queries)`. `q_max_len`/`p_max_len` are written as `query_length`/`document_length`,
  which sentence-transformers >= 6 applies in `encode_query`/`encode_document`; older versions reject
  unknown keys, so `stage.task_lengths=false` leaves them out (every text is then cut at `max_seq_length`,
  which is `p_max_len`).
- passages of a `concat` model: `encode_document(title + " " + text)` (or the text alone when untitled).
- passages of a `pair` model (SimLM's `[CLS] title [SEP] text [SEP]`, token types 0/1):
  `encode_document([(title, text), ...])`, a `(title, text)` tuple per passage, `("", text)` when untitled
  (SimLM encodes `[CLS] [SEP] text [SEP]`). A plain "title text" string gives other embeddings: the export
  logs this caveat.
- separate query/passage encoders have no single-backbone equivalent: export refuses them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from simlm.checkpoints import (
    checkpoint_hparams,
    checkpoint_state_dict,
    is_deepspeed_checkpoint,
    load_module_state,
)
from simlm.models.encoder import (
    MODEL_SETTING_KEYS,
    SETTINGS_FILE,
    TextEncoder,
    embedding_dim,
    load_encoder,
    load_tokenizer,
    settings_source,
)
from simlm.models.hub import check_model_source
from simlm.stages import Metrics
from simlm.stages.params import BOOL, NON_EMPTY_TEXT, PATH, optional

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."

# checked before the stage runs (simlm.stages.params)
PARAMS = {
    "source": PATH,
    "out_dir": PATH,
    "base_model": optional(NON_EMPTY_TEXT),
    "task_lengths": BOOL,
}


def resolve_source(source: str | Path) -> Path:
    """The model folder or checkpoint `source` names (a run dir stands for its `model/` folder)."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"stage.source={source}: no such file or directory")
    if path.is_dir() and not (path / SETTINGS_FILE).is_file() and (path / "model" / SETTINGS_FILE).is_file():
        return path / "model"
    return path


def load_from_checkpoint(
    path: Path, model_cfg: Any, base_model: str | None = None
) -> tuple[TextEncoder, Any, str]:
    """The bi-encoder of a Lightning `.ckpt` or DeepSpeed checkpoint, its base model's tokenizer, and
    where its settings came from (for the log).

    Base model and settings: `base_model`, else the checkpoint's hyper-parameters, else `model_cfg`.
    """
    hparams = checkpoint_hparams(path)
    if base_model:
        base, key = str(base_model), "stage.base_model"
    elif hparams.get("model_name_or_path"):
        base, key = str(hparams["model_name_or_path"]), f"the base model named in {path}"
    else:
        base, key = str(model_cfg["name_or_path"]), "model.name_or_path"
    check_model_source(base, key)
    if hparams.get("settings"):
        settings, source = hparams["settings"], f"the hyper-parameters of {path}"
    else:
        settings = {k: model_cfg[k] for k in MODEL_SETTING_KEYS if model_cfg.get(k) is not None}
        source = f"the model config ({path} holds no retrieval settings)"
    state = checkpoint_state_dict(path)
    encoder_state = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder_state:
        raise ValueError(
            f"{path} holds no `encoder.*` weights: only bi-encoder checkpoints (stage=biencoder, "
            "kd_biencoder) can be exported"
        )
    encoder = TextEncoder.from_pretrained(base, **dict(settings))
    load_module_state(encoder, encoder_state)
    return encoder, load_tokenizer(base), source


def load_folder(path: Path, model_cfg: Any) -> tuple[TextEncoder, Any, str]:
    """A model folder loaded as `stage=encode` loads it (`load_encoder`): its saved settings win, else
    the `model` group's; returns `(encoder, tokenizer, where the settings came from)`."""
    keys = (*MODEL_SETTING_KEYS, "override_saved_settings")
    folder_cfg = {k: model_cfg[k] for k in keys if k in model_cfg} | {"name_or_path": str(path)}
    encoder, tokenizer = load_encoder(folder_cfg)
    return encoder, tokenizer, settings_source(folder_cfg)


def load_source(
    source: str | Path, model_cfg: Any, base_model: str | None = None
) -> tuple[TextEncoder, Any, str]:
    """`(encoder, tokenizer, settings source)` of a model folder, run dir, `.ckpt` file or DeepSpeed
    checkpoint directory."""
    path = resolve_source(source)
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        return load_folder(path, model_cfg)
    return load_from_checkpoint(path, model_cfg, base_model)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_sentence_transformers_files(
    out_dir: Path, encoder: TextEncoder, task_lengths: bool = True
) -> list[dict[str, Any]]:
    """Write the sentence-transformers module files next to the Hugging Face weights; returns modules.json."""
    settings = encoder.settings
    hidden = int(encoder.query_model.config.hidden_size)
    modules: list[dict[str, Any]] = []

    def add(kind: str, folder: str) -> Path:
        idx = len(modules)
        path = f"{idx}_{folder}" if folder else ""
        modules.append(
            {"idx": idx, "name": str(idx), "path": path, "type": f"sentence_transformers.models.{kind}"}
        )
        return out_dir / path

    add("Transformer", "")
    sbert = {"max_seq_length": settings.p_max_len, "do_lower_case": False}
    if task_lengths:
        sbert |= {"query_length": settings.q_max_len, "document_length": settings.p_max_len}
    _write_json(out_dir / "sentence_bert_config.json", sbert)

    modes = (
        "cls_token",
        "mean_tokens",
        "max_tokens",
        "mean_sqrt_len_tokens",
        "weightedmean_tokens",
        "lasttoken",
    )
    chosen = "cls_token" if settings.pooling == "cls" else "mean_tokens"
    pooling = {"word_embedding_dimension": hidden, **{f"pooling_mode_{m}": m == chosen for m in modes}}
    _write_json(add("Pooling", "Pooling") / "config.json", {**pooling, "include_prompt": True})

    if encoder.pooler is not None:
        from safetensors.torch import save_file

        dense_dir = add("Dense", "Dense")
        linear = encoder.pooler
        dense = {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": linear.bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        _write_json(dense_dir / "config.json", dense)
        weights = {f"linear.{k}": v.detach().contiguous().cpu() for k, v in linear.state_dict().items()}
        save_file(weights, str(dense_dir / "model.safetensors"))
    if settings.l2_normalize:
        add("Normalize", "Normalize").mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "modules.json", modules)

    _write_json(
        out_dir / "config_sentence_transformers.json",
        {
            "prompts": {"query": settings.query_prefix, "document": settings.passage_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if settings.l2_normalize else "dot",
        },
    )
    return modules


def export(encoder: TextEncoder, tokenizer: Any, out_dir: str | Path, task_lengths: bool = True) -> Path:
    """Save `encoder` as a Hugging Face + sentence-transformers folder; refuses separate query/passage encoders."""
    if not encoder.shared:
        raise ValueError(
            "this model has separate query and passage encoders: a sentence-transformers model has one "
            "backbone, so export refuses it (use the model folder with simlm's encode_texts/load_encoder)"
        )
    if encoder.settings.passage_format == "pair":
        log.warning(
            "passage_format=pair: with sentence-transformers encode passages as (title, text) tuples, "
            "('', text) when untitled; a 'title text' string embeds differently"
        )
    out_dir = Path(out_dir)
    encoder.save_pretrained(out_dir, tokenizer)
    write_sentence_transformers_files(out_dir, encoder, task_lengths=task_lengths)
    return out_dir


def run(cfg: DictConfig) -> Metrics:
    """Export `stage.source` into `stage.out_dir`; metrics: the embedding dimension."""
    stage = cfg.stage
    # the model group's settings apply to folders without simlm_retrieval.json and to checkpoints without
    # hyper-parameters; its name_or_path only to the latter
    encoder, tokenizer, source = load_source(stage.source, cfg.model, stage.get("base_model"))
    out_dir = export(encoder, tokenizer, stage.out_dir, task_lengths=bool(stage.get("task_lengths", True)))
    log.info(
        "exported %s to %s with settings from %s: %s", stage.source, out_dir, source, asdict(encoder.settings)
    )
    print(f"exported {stage.source} -> {out_dir} (settings from {source})")
    return {"export": {"dim": float(embedding_dim(encoder))}}
