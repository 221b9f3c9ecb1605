"""Which pretrained encoder to start from: a builtin name, a local directory, or a Hugging Face hub name.

The hub path is the normal transformers one (online, or offline from the HF cache); offline and uncached
it becomes a one-line error that names the builtin model, which needs no network at all.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bertclf.errors import UserError

DEFAULT_MODEL = "me5-small"


def resolve(model: str, log=print) -> str:
    """A local directory path or a hub name that from_pretrained can load."""
    from bertclf.models.builtin import BUILTIN_MODELS, builtin_model_path

    if model in BUILTIN_MODELS:
        return str(builtin_model_path(model, log=log))
    p = Path(model).expanduser()
    if p.exists():
        return str(check_model_dir(p))
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep + os.sep in model:
        raise UserError(f"{model}: model directory not found; give a model directory, a hub name, "
                        f"or the builtin '{DEFAULT_MODEL}'")
    return model


def check_model_dir(p: Path) -> Path:
    if not p.is_dir():
        raise UserError(f"{p}: not a model directory; give a directory holding config.json and weights")
    if not (p / "config.json").is_file():
        raise UserError(f"{p}: not a model directory (no config.json); point at a saved model directory")
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{p / 'config.json'}: not valid JSON ({e}); the model directory is damaged, "
                        f"re-train or re-export it") from None
    if not isinstance(config, dict):
        raise UserError(f"{p / 'config.json'}: not a JSON object; the model directory is damaged, re-train or "
                        f"re-export it")
    if not any((p / w).is_file() for w in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                              "model.onnx")):
        raise UserError(f"{p}: no weights (model.safetensors) in this directory; it holds an incomplete model")
    return p


def _hub_error(name: str, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot load model '{name}' ({first[:200]}); without network use the builtin model "
                     f"(--model {DEFAULT_MODEL}) or a local model directory")


def quiet_transformers():
    """No per-shard progress bars or 'newly initialized' notes: bertclf says what matters itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(name_or_dir: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_dir, e) from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"{name_or_dir}: only fast (Rust) tokenizers are supported; the model needs a tokenizer.json")
    return tok


def load_classifier(name_or_dir: str, id2label: dict[int, str] | None = None, dtype=None):
    """AutoModelForSequenceClassification with our label map (a new head when the labels differ)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(name_or_dir)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_dir, e) from None
    kwargs = {}
    if id2label is not None:
        same = getattr(config, "id2label", None) and {int(k): v for k, v in config.id2label.items()} == id2label
        kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
        if not same:
            kwargs["ignore_mismatched_sizes"] = True
    quiet_transformers()  # "newly initialized classifier" warnings are expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name_or_dir, dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_dir, e) from None
    except SafetensorError as e:
        raise UserError(f"{name_or_dir}: cannot read its weights ({e}); model.safetensors is truncated or corrupt, "
                        f"copy it again or re-train") from None
    return model


def check_max_length(max_length: int, model: str) -> None:
    """--max-length within the model's position embeddings (when its config.json is on disk: a local directory
    or a built builtin model; the loop can call this again on the resolved directory of a hub model)."""
    limit = usable_positions(model)
    if limit is not None and max_length > limit:
        raise UserError(f"--max-length: {max_length} is more than the {limit} positions model {model} has; "
                        f"use --max-length {limit} or less")


# Position embeddings of these models start after the padding id (RoBERTa's offset): fewer usable positions.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer")


def usable_positions(model: str) -> int | None:
    """Tokens per text the model's position embeddings allow, from its config.json when it is on disk (a local
    directory or an already built builtin model); None when unknown (the model loader reports bad folders)."""
    from bertclf.models.builtin import BUILTIN_MODELS, FORMAT_VERSION
    from bertclf.io.files import cache_dir

    where = (cache_dir() / "models" / f"{model}-v{FORMAT_VERSION}" if model in BUILTIN_MODELS
             else Path(model).expanduser())
    try:
        config = json.loads((where / "config.json").read_text(encoding="utf-8"))
        n = int(config["max_position_embeddings"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if config.get("model_type") in OFFSET_POSITIONS:
        n -= int(config.get("pad_token_id") or 1) + 1
    return n
