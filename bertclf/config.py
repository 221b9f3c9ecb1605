"""The training configuration: its fields, defaults and the checks on them, in one place."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from bertclf.errors import UserError
from bertclf.models import DEFAULT_MODEL


@dataclass
class TrainConfig:
    out: str
    data: str | None = None            # "nsmc", or None for --train FILE
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    text_col: str | None = None        # default: "document" for NSMC, else "text"
    label_col: str | None = None       # default: "label"
    data_dir: str | None = None
    model: str = DEFAULT_MODEL
    epochs: float = 2
    batch_size: int | None = None      # default: 32 on CPU, 256 on GPU
    lr: float | None = None            # default: scaled with the batch size
    max_length: int = 128
    sample: float = 1.0
    test_sample: float = 1.0           # score on this fraction of the test rows (seeded, stratified)
    seed: int = 42
    max_steps: int | None = None
    precision: str = "auto"            # auto | fp32 | bf16 | fp16
    grad_accum: int = 1
    eval_every: int | None = None      # steps; default once per epoch
    patience: int | None = None        # evaluations without improvement before stopping
    checkpoint_every: int | None = None
    resume: bool = False
    overwrite: bool = False
    valid_frac: float = 0.05
    warmup: float = 0.06               # fraction of steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int | None = None       # steps; default ~20 lines per run, at most every 500
    keep_checkpoints: int = 2
    trim_vocab: bool | None = None     # keep only the vocabulary pieces the training data uses (default: on for
                                       # builtin models: no optimizer work on 240k embedding rows never used)
    eval_batch_size: int = 128
    multi_label: bool = False          # a label cell holds several labels (split by --label-sep); sigmoid + BCE
    label_sep: str = ","               # separator of the labels in a multi-label cell
    label_names: str | None = None     # FILE: line i names label id i (the label cells hold ids)
    class_weights: str = "none"        # none | auto (smoothed inverse frequency, recorded in bertclf.json)
    metric: str | None = None          # checkpoint selection and early stopping: accuracy | macro_f1 | weighted_f1
                                       # | micro_f1 (default: accuracy, multi-label macro_f1)


# Settings that must match for --resume to continue the same run.
RESUME_KEYS = ("data", "train", "valid", "model", "epochs", "batch_size", "lr", "max_length", "sample", "seed",
               "max_steps", "precision", "grad_accum", "valid_frac", "warmup", "weight_decay", "trim_vocab",
               "text_col", "label_col", "eval_every", "multi_label", "label_sep", "label_names", "class_weights",
               "metric")


def validate_config(cfg: TrainConfig) -> None:
    def bad(flag, why):
        raise UserError(f"--{flag}: {why}")

    if cfg.data not in (None, "nsmc"):
        bad("data", f"unknown dataset '{cfg.data}'; the builtin dataset is 'nsmc', or use --train FILE")
    if (cfg.data is None) == (cfg.train is None):
        bad("train", "give exactly one of --data nsmc or --train FILE")
    if not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
        bad("epochs", f"must be a number > 0, got {cfg.epochs}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        bad("batch-size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.lr is not None and not (0 < cfg.lr < 1):
        bad("lr", f"must be between 0 and 1, got {cfg.lr}")
    if not 8 <= cfg.max_length <= 8192:
        bad("max-length", f"must be between 8 and 8192, got {cfg.max_length}")
    if not 0 < cfg.sample <= 1:
        bad("sample", f"must be a fraction in (0, 1], got {cfg.sample}")
    if not 0 < cfg.test_sample <= 1:
        bad("test-sample", f"must be a fraction in (0, 1], got {cfg.test_sample}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        bad("max-steps", f"must be >= 1, got {cfg.max_steps}")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        bad("precision", f"must be auto, fp32, bf16 or fp16, got {cfg.precision}")
    if cfg.grad_accum < 1:
        bad("grad-accum", f"must be >= 1, got {cfg.grad_accum}")
    for name in ("eval_every", "patience", "checkpoint_every", "log_every"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            bad(name.replace("_", "-"), f"must be >= 1, got {v}")
    if not 0 < cfg.valid_frac < 0.5:
        bad("valid-frac", f"must be in (0, 0.5), got {cfg.valid_frac}")
    if not 0 <= cfg.warmup < 1:
        bad("warmup", f"must be a fraction in [0, 1), got {cfg.warmup}")
    if cfg.class_weights not in ("none", "auto"):
        bad("class-weights", f"must be auto or none, got {cfg.class_weights}")
    if cfg.metric is not None and cfg.metric not in ("accuracy", "macro_f1", "weighted_f1", "micro_f1"):
        bad("metric", f"must be accuracy, macro_f1, weighted_f1 or micro_f1, got {cfg.metric}")
    if cfg.metric == "micro_f1" and not cfg.multi_label:
        bad("metric", "micro_f1 is for --multi-label (single-label micro-F1 equals accuracy); use accuracy")
    if not cfg.label_sep:
        bad("label-sep", "must not be empty; give the character between the labels of a cell, e.g. ','")
    if cfg.keep_checkpoints < 1:
        bad("keep-checkpoints", f"must be >= 1, got {cfg.keep_checkpoints}")


def trims_vocab(cfg: TrainConfig) -> bool:
    """--trim-vocab unset: trim the builtin models (their 250k-piece embedding is 80% of the parameters)."""
    if cfg.trim_vocab is not None:
        return cfg.trim_vocab
    from bertclf.builtin import BUILTIN_MODELS

    return cfg.model in BUILTIN_MODELS


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})
