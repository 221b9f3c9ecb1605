"""The training configuration: its fields, defaults and the checks on them, in one place."""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

from bertclf.data.batches import check_batch_size
from bertclf.errors import UserError
from bertclf.models.resolve import DEFAULT_MODEL, check_max_length


DATA, LABELS, RECIPE, RUN = "data", "labels and task", "model and recipe", "logging, evaluation, checkpoints"
METRICS = ("accuracy", "macro_f1", "weighted_f1", "micro_f1")


def opt(default, help: str, group: str, **flag):  # noqa: A002 (help: argparse's word)
    """A TrainConfig field with what its command-line flag needs: help, group, and any of choices, metavar,
    required, flag (another name than --field-name), parse ("columns": a comma-separated list)."""
    meta = {"help": help, "group": group, **flag}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on. `bertclf train`'s flags are made from these fields (cli.py)."""

    out: str = opt(MISSING, "output directory (a Hugging Face model directory)", RECIPE, required=True)
    data: str | None = opt(None, "builtin dataset: nsmc", DATA, choices=("nsmc",))
    train: str | None = opt(None, "labelled TSV/CSV/JSONL file", DATA, metavar="FILE")
    valid: str | None = opt(None, "validation file (default: a stratified split of --train)", DATA, metavar="FILE")
    test: str | None = opt(None, "test file, scored once at the end", DATA, metavar="FILE")
    text_col: str | None = opt(None, "text column (default: document for NSMC, else text)", DATA)
    label_col: str | None = opt(None, "label column (default: label)", DATA)
    text_pair_col: str | None = opt(None, "second text column: each row is a sentence pair (e.g. premise and "
                                    "hypothesis), read through the tokenizer's pair template and cut longest-first "
                                    "at --max-length", DATA, metavar="COL")
    group_col: str | None = opt(None, "keep the rows that share this column's value (e.g. one premise) on one side of "
                                "the validation split", DATA, metavar="COL")
    columns: list[str] | None = opt(None, "names of the columns of files without a header line, e.g. "
                                    "id,text,label (the first line is then a row)", DATA, parse="columns",
                                    metavar="A,B,...")
    encoding: str = opt("utf-8", "text encoding of the data files, e.g. cp949 or euc-kr", DATA)
    data_dir: str | None = opt(None, "folder holding NSMC's ratings_train.txt / ratings_test.txt", DATA)
    sample: float = opt(1.0, "train on this fraction of the training rows (seeded)", DATA)
    test_sample: float = opt(1.0, "score on this fraction of the test rows at the end (seeded, stratified)", DATA)
    valid_frac: float | None = opt(None, "share of train carved out for validation (default 0.05; multi-label "
                                   "~1,000 rows, 0.05-0.2: its thresholds are tuned there)", DATA)
    multi_label: bool = opt(False, "a label cell holds several labels (split by --label-sep); sigmoid + BCE, "
                            "thresholds tuned on validation", LABELS)
    label_sep: str = opt(",", "separator of the labels in a multi-label cell (default ,)", LABELS)
    label_names: str | None = opt(None, "line i names label id i (the label cells hold ids)", LABELS, metavar="FILE")
    class_weights: str = opt("none", "auto: weight the loss by smoothed inverse class frequency (recorded in "
                             "bertclf.json)", LABELS, choices=("none", "auto"))
    metric: str | None = opt(None, "checkpoint selection and early stopping (default accuracy; multi-label "
                             "macro_f1)", LABELS, choices=METRICS)
    select: str = opt("within-noise", "which validated weights become the model: best (the highest --metric, the "
                      "first of equal ones) or within-noise (the latest within one standard error of the highest: "
                      "on a few hundred validation rows a one-row lead is noise, and later weights are more trained)",
                      LABELS, choices=("within-noise", "best"))
    model: str = opt(DEFAULT_MODEL, f"builtin name, local directory or hub name (default {DEFAULT_MODEL})", RECIPE)
    epochs: float | None = opt(None, "passes over the training rows, a fraction stops part-way (default 2; "
                               "multi-label: enough for ~800 optimizer steps, 2 to 10 passes)", RECIPE)
    batch_size: int | None = opt(None, "rows per micro-batch (default 32 on CPU, 256 on GPU)", RECIPE)
    lr: float | None = opt(None, "peak learning rate (default 1e-4 x sqrt(batch / 32), at most 2e-4; the new "
                           "classification head at least 1e-3)", RECIPE)
    max_length: int = opt(128, "tokens per text, longer texts are cut", RECIPE)
    seed: int = opt(42, "seed of sampling, splits, batches and dropout", RECIPE)
    max_steps: int | None = opt(None, "stop after this many optimizer steps", RECIPE)
    precision: str = opt("auto", "numeric precision (auto: bf16 on GPUs and on CPUs with native bf16 (AMX / AVX-512 BF16), fp16 on older GPUs, else fp32)", RECIPE, choices=("auto", "fp32", "bf16", "fp16"))
    grad_accum: int = opt(1, "micro-batches per optimizer step", RECIPE)
    warmup: float = opt(0.06, "warmup share of the steps", RECIPE)
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and LayerNorms)", RECIPE)
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this", RECIPE)
    trim_vocab: bool | None = opt(None, "keep only the vocabulary the training texts use (default: on for builtin "
                                  "models: no optimizer work on embedding rows never used; --no-trim-vocab: off)",
                                  RECIPE, tri_state=True)
    log_every: int | None = opt(None, "print loss/accuracy every N steps (default ~20 lines per run)", RUN)
    eval_every: int | None = opt(None, "validate every N steps (default: each epoch)", RUN)
    eval_batch_size: int = opt(128, "rows per batch when validating and testing", RUN)
    patience: int | None = opt(None, "stop after N validations without improvement", RUN)
    checkpoint_every: int | None = opt(None, "write a resumable checkpoint every N steps", RUN)
    keep_checkpoints: int = opt(2, "how many step checkpoints to keep (plus best)", RUN)
    resume: bool | str = opt(False, "continue the run in --out from its last checkpoint; --resume auto: continue it "
                             "if it has a complete checkpoint, else start fresh (one command for restart loops)", RUN,
                             optional_choice="auto")
    overwrite: bool = opt(False, "replace what --out holds", RUN)
    # issue 17: after training (not a resume key: it acts only when the run finishes)
    calibrate: bool = opt(True, "fit a temperature on the validation rows and fold it into the classifier, so "
                          "every probability the model gives is calibrated (single-label; --no-calibrate: off)",
                          LABELS, negatable=True)
    # not a resume key either: it acts only when the run finishes (bertclf/train/finish.py, bertclf/models/ngram.py)
    ngram: str = opt("auto", "blend the encoder with `bertclf baseline`'s TF-IDF n-gram model fitted on the same "
                     "training rows, at a weight chosen on the validation rows (saved in the model directory; "
                     "predict, eval and serve use the blend): auto keeps it when the blend scores no lower than the "
                     "encoder on validation, on always, off never", LABELS, choices=("auto", "on", "off"))
    long_text: str = opt("truncate", "texts longer than --max-length: truncate (keep the start) or head-tail (the "
                         "first and last tokens); predict, eval and serve also have window", RECIPE,
                         choices=("truncate", "head-tail"))


# Settings that must match for --resume to continue the same run.
RESUME_KEYS = ("data", "train", "valid", "model", "epochs", "batch_size", "lr", "max_length", "sample", "seed",
               "max_steps", "precision", "grad_accum", "valid_frac", "warmup", "weight_decay", "trim_vocab",
               "text_col", "label_col", "eval_every", "columns", "max_grad_norm", "multi_label", "label_sep",
               "label_names", "class_weights", "metric", "long_text", "select", "encoding", "text_pair_col",
               "group_col")


def validate_config(cfg: TrainConfig) -> None:
    """Every check that needs no data: one-line UserErrors naming the flag, before any work."""
    def bad(flag, why):
        raise UserError(f"--{flag}: {why}")

    if cfg.data not in (None, "nsmc"):
        bad("data", f"unknown dataset '{cfg.data}'; the builtin dataset is 'nsmc', or use --train FILE")
    if (cfg.data is None) == (cfg.train is None):
        bad("train", "give exactly one of --data nsmc or --train FILE")
    if cfg.epochs is not None and not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
        bad("epochs", f"must be a number > 0, got {cfg.epochs}")
    if cfg.batch_size is not None:
        check_batch_size(cfg.batch_size)
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
    for name in ("grad_accum", "keep_checkpoints", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            bad(name.replace("_", "-"), f"must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "patience", "checkpoint_every", "log_every"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            bad(name.replace("_", "-"), f"must be >= 1, got {v}")
    if cfg.valid_frac is not None and not 0 < cfg.valid_frac < 0.5:
        bad("valid-frac", f"must be in (0, 0.5), got {cfg.valid_frac}")
    if not 0 <= cfg.warmup < 1:
        bad("warmup", f"must be a fraction in [0, 1), got {cfg.warmup}")
    if cfg.resume not in (False, True, "auto"):
        bad("resume", f"give --resume alone, or --resume auto; got {cfg.resume!r}")
    if not (0 <= cfg.weight_decay < 1):
        bad("weight-decay", f"must be in [0, 1), got {cfg.weight_decay}")
    if not (cfg.max_grad_norm > 0 and math.isfinite(cfg.max_grad_norm)):
        bad("max-grad-norm", f"must be a number > 0, got {cfg.max_grad_norm}")
    if cfg.class_weights not in ("none", "auto"):
        bad("class-weights", f"must be auto or none, got {cfg.class_weights}")
    if cfg.metric is not None and cfg.metric not in METRICS:
        bad("metric", f"must be accuracy, macro_f1, weighted_f1 or micro_f1, got {cfg.metric}")
    if cfg.metric == "micro_f1" and not cfg.multi_label:
        bad("metric", "micro_f1 is for --multi-label (single-label micro-F1 equals accuracy); use accuracy")
    if cfg.ngram not in ("auto", "on", "off"):
        bad("ngram", f"must be auto, on or off, got {cfg.ngram!r}")
    if cfg.long_text not in ("truncate", "head-tail"):
        bad("long-text", f"training takes truncate or head-tail (window is for predict, eval and serve), got "
                         f"{cfg.long_text!r}")
    if cfg.text_pair_col and cfg.long_text != "truncate":
        bad("long-text", f"{cfg.long_text} is for single texts; a sentence pair (--text-pair-col) is cut "
                         f"longest-first at --max-length: drop --long-text")
    if cfg.group_col and cfg.valid:
        bad("group-col", "groups the validation split of --train, and --valid FILE is given (no split): drop one")
    if not cfg.label_sep:
        bad("label-sep", "must not be empty; give the character between the labels of a cell, e.g. ','")
    from bertclf.io.rows import check_encoding, parse_columns

    check_encoding(cfg.encoding)
    cfg.columns = parse_columns(cfg.columns)
    check_max_length(cfg.max_length, cfg.model)


def trims_vocab(cfg: TrainConfig) -> bool:
    """--trim-vocab unset: trim the builtin models (their 250k-piece embedding is 80% of the parameters)."""
    if cfg.trim_vocab is not None:
        return cfg.trim_vocab
    from bertclf.models.builtin import BUILTIN_MODELS

    return cfg.model in BUILTIN_MODELS


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def add_train_flags(parser) -> None:
    """`bertclf train`'s flags, one per TrainConfig field: --field-name, its type, default, help and choices."""
    import argparse
    import typing

    hints = typing.get_type_hints(TrainConfig)
    groups = {name: parser.add_argument_group(name) for name in (DATA, LABELS, RECIPE, RUN)}
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        group = groups[meta["group"]]
        kw = {"help": meta["help"], "dest": f.name}
        if f.default is not MISSING:
            kw["default"] = f.default
        kind = hints[f.name]
        if "optional_choice" in meta:  # a switch that may take one word: --resume, --resume auto
            kw.update(nargs="?", const=True, choices=[meta["optional_choice"]])
        elif meta.get("tri_state") or meta.get("negatable"):  # --flag / --no-flag (tri_state: neither = None)
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is bool:
            kw["action"] = "store_true"
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            kw["type"] = {"columns": str, None: {int: int, float: number}.get(base, str)}[meta.get("parse")]
            kw["metavar"] = {int: "N", float: "X"}.get(base)
            for key in ("choices", "metavar", "required"):
                if key in meta:
                    kw[key] = meta[key]
        group.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), **kw)


def number(s: str) -> float:
    """A float flag value; argparse reports the message with the flag's name."""
    import argparse

    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
