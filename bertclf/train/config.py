"""The training configuration: its fields, defaults and the checks on them, in one place."""
from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields

from bertclf.errors import UserError
from bertclf.models.resolve import DEFAULT_MODEL, check_max_length


DATA, LABELS, RECIPE, RUN = "data", "labels and task", "model and recipe", "logging, evaluation, checkpoints"
METRICS = ("accuracy", "macro_f1", "weighted_f1", "micro_f1")


@dataclass(frozen=True)
class Range:
    """The numbers a flag takes: low/high bounds, each closed unless said open; `whole`: an integer."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, v) -> bool:
        if not math.isfinite(v):
            return False
        return ((self.low is None or (v > self.low if self.low_open else v >= self.low))
                and (self.high is None or (v < self.high if self.high_open else v <= self.high)))

    def describe(self) -> str:
        if self.high is None:
            return f"must be {'>' if self.low_open else '>='} {_num(self.low)}"
        return (f"must be in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                f"{')' if self.high_open else ']'}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(0, None, low_open=True)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1, low_open=True)  # (0, 1]
SHARE = Range(0, 1, high_open=True)  # [0, 1)


def opt(default, help: str, group: str, *, resume: bool, range: Range | None = None,  # noqa: A002
        **flag):
    """A TrainConfig field and everything made from it: its `bertclf train` flag (help, group, and any of
    choices, metavar, required, flag: another name than --field-name, parse: "columns" for a comma-separated
    list), its check (choices, range), and whether --resume must see the same value (`resume`: the setting
    changes the computation). Declared once here; the parser, validate_config and RESUME_KEYS read it."""
    meta = {"help": help, "group": group, "resume": resume, "range": range, **flag}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on. `bertclf train`'s flags are made from these fields (cli.py)."""

    out: str = opt(MISSING, "output directory (a Hugging Face model directory)", RECIPE, required=True, resume=False)
    data: str | None = opt(None, "builtin dataset: nsmc", DATA, choices=("nsmc",), resume=True,
                           hint="the builtin dataset is nsmc; for your own file use --train FILE")
    train: str | None = opt(None, "labelled TSV/CSV/JSONL/Parquet file (or a folder or glob of Parquet files, or a "
                                   "datasets.save_to_disk folder)", DATA, metavar="FILE", resume=True)
    valid: str | None = opt(None, "validation file (default: a stratified split of --train)", DATA, metavar="FILE",
                            resume=True)
    test: str | None = opt(None, "test file, scored once at the end", DATA, metavar="FILE", resume=False)
    text_col: str | None = opt(None, "text column (default: document for NSMC, else text)", DATA, resume=True)
    label_col: str | None = opt(None, "label column (default: label)", DATA, resume=True)
    text_pair_col: str | None = opt(None, "second text column: each row is a sentence pair (e.g. premise and "
                                    "hypothesis), read through the tokenizer's pair template and cut longest-first "
                                    "at --max-length", DATA, metavar="COL", resume=True)
    group_col: str | None = opt(None, "keep the rows that share this column's value (e.g. one premise) on one side "
                                "of the validation split", DATA, metavar="COL", resume=True)
    columns: list[str] | None = opt(None, "names of the columns of files without a header line, e.g. "
                                    "id,text,label (the first line is then a row)", DATA, parse="columns",
                                    metavar="A,B,...", resume=True)
    texts: str | None = opt(None, "unlabelled texts (a text column, --text-col, or one text per line): after the "
                            "normal run, a second fine-tune of --model on the labelled rows plus these, taught by the "
                            "first model's soft labels as bertclf distill does; the second is kept only if it scores "
                            "no lower on validation (twice the training time, and more with many texts)", DATA,
                            metavar="FILE", resume=True)
    encoding: str = opt("utf-8", "text encoding of the data files, e.g. cp949 or euc-kr", DATA, resume=True)
    data_dir: str | None = opt(None, "folder holding NSMC's ratings_train.txt / ratings_test.txt", DATA, resume=False)
    sample: float = opt(1.0, "train on this fraction of the training rows (seeded)", DATA,
                        resume=True, range=FRACTION)
    test_sample: float = opt(1.0, "score on this fraction of the test rows at the end (seeded, stratified)", DATA,
                             resume=False, range=FRACTION)
    valid_frac: float | None = opt(None, "share of train carved out for validation (default 0.05; multi-label "
                                   "~1,000 rows, 0.05-0.2: its thresholds are tuned there)", DATA,
                                   resume=True, range=Range(0, 0.5, low_open=True, high_open=True))
    multi_label: bool = opt(False, "a label cell holds several labels (split by --label-sep); sigmoid + BCE, "
                            "thresholds tuned on validation", LABELS, resume=True)
    label_sep: str = opt(",", "separator of the labels in a multi-label cell (default ,)", LABELS, resume=True)
    label_names: str | None = opt(None, "line i names label id i (the label cells hold ids)", LABELS, metavar="FILE",
                                  resume=True)
    class_weights: str = opt("none", "auto: weight the loss by smoothed inverse class frequency (recorded in "
                             "bertclf.json)", LABELS, choices=("none", "auto"), resume=True)
    metric: str | None = opt(None, "checkpoint selection and early stopping (default accuracy; multi-label "
                             "macro_f1)", LABELS, choices=METRICS, resume=True)
    select: str = opt("within-noise", "which validated weights become the model: best (the highest --metric, the "
                      "first of equal ones) or within-noise (the latest within one standard error of the highest: "
                      "on a few hundred validation rows a one-row lead is noise, and later weights are more trained)",
                      LABELS, choices=("within-noise", "best"), resume=True)
    model: str = opt(DEFAULT_MODEL, f"builtin name, local directory or hub name (default {DEFAULT_MODEL})", RECIPE,
                     resume=True)
    epochs: float | None = opt(None, "passes over the training rows, a fraction stops part-way (default 2; "
                               "multi-label: enough for ~800 optimizer steps, 2 to 10 passes; sentence pairs: "
                               "~400 steps, 2 to 4 passes)", RECIPE,
                               resume=True, range=POSITIVE)
    batch_size: int | None = opt(None, "rows per micro-batch (default 32 on CPU, 256 on GPU)", RECIPE,
                                 resume=True, range=AT_LEAST_1)
    lr: float | None = opt(None, "peak learning rate (default 1e-4 x sqrt(batch / 32), at most 2e-4; the new "
                           "classification head at least 1e-3)", RECIPE,
                           resume=True, range=Range(0, 1, low_open=True, high_open=True))
    max_length: int = opt(128, "tokens per text, longer texts are cut", RECIPE, resume=True, range=Range(8, 8192))
    seed: int = opt(42, "seed of sampling, splits, batches and dropout", RECIPE, resume=True)
    max_steps: int | None = opt(None, "stop after this many optimizer steps", RECIPE, resume=True, range=AT_LEAST_1)
    precision: str = opt("auto", "numeric precision (auto: bf16 on GPUs and on CPUs with native bf16 (AMX / "
                         "AVX-512 BF16), fp16 on older GPUs, else fp32); bf16 autocasts per op, bf16-weights holds "
                         "the model in bf16 (no casts) with fp32 master weights in the optimizer", RECIPE,
                         choices=("auto", "fp32", "bf16", "fp16", "bf16-weights"), resume=True)
    grad_accum: int = opt(1, "micro-batches per optimizer step", RECIPE, resume=True, range=AT_LEAST_1)
    compile: str = opt("auto", "torch.compile the training step, its batches padded to a few fixed shapes (at most 7 "
                       "widths per micro-batch size at --max-length 128), each compiled once; the run says how many "
                       "and how long compiling took (auto: on for CUDA; off on CPUs, where a compiled me5-small step "
                       "was 1.03x eager's speed after 90 s of compiling per shape: docs/compile.md)", RECIPE,
                       choices=("auto", "on", "off"), resume=True)
    warmup: float = opt(0.06, "warmup share of the steps", RECIPE, resume=True, range=SHARE)
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and LayerNorms)", RECIPE,
                              resume=True, range=SHARE)
    layer_decay: float = opt(1.0, "layer-wise lr decay: each encoder layer below the top trains at this times the "
                             "lr of the one above (the embeddings below the first layer; the head and pooler at "
                             "the full lr); 1: the same lr everywhere", RECIPE, resume=True, range=FRACTION)
    label_smoothing: float = opt(0.0, "share of each target spread over the other labels (0.1 is common; "
                                 "multi-label: each 0/1 pulled that share toward 1/2)", RECIPE, resume=True,
                                 range=SHARE)
    rdrop: float = opt(0.0, "R-Drop: each row runs twice under two dropout masks and the loss adds this times the "
                       "symmetric KL between the two predictions (Liang et al. 2021; twice the compute per step); "
                       "0: off", RECIPE, resume=True, range=Range(0))
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this", RECIPE, resume=True, range=POSITIVE)
    trim_vocab: bool | None = opt(None, "keep only the vocabulary the training texts use (default: on for builtin "
                                  "models: no optimizer work on embedding rows never used; --no-trim-vocab: off)",
                                  RECIPE, tri_state=True, resume=True)
    log_every: int | None = opt(None, "print loss/accuracy every N steps (default ~20 lines per run)", RUN,
                                resume=False, range=AT_LEAST_1)
    eval_every: int | None = opt(None, "validate every N steps (default: each epoch)", RUN,
                                 resume=True, range=AT_LEAST_1)
    eval_batch_size: int = opt(128, "rows per batch when validating and testing", RUN, resume=False, range=AT_LEAST_1)
    patience: int | None = opt(None, "stop after N validations without improvement", RUN,
                               resume=False, range=AT_LEAST_1)
    checkpoint_every: int | None = opt(None, "write a resumable checkpoint every N steps", RUN,
                                       resume=False, range=AT_LEAST_1)
    keep_checkpoints: int = opt(2, "how many step checkpoints to keep (plus best)", RUN,
                                resume=False, range=AT_LEAST_1)
    resume: bool | str = opt(False, "continue the run in --out from its last checkpoint; --resume auto: continue it "
                             "if it has a complete checkpoint, else start fresh (one command for restart loops)", RUN,
                             optional_choice="auto", resume=False)
    overwrite: bool = opt(False, "replace what --out holds", RUN, resume=False)
    report_to: str = opt("none", "send the run to experiment trackers: none, all, or a comma-separated list of "
                         "tensorboard (event files in OUT/tracking/tensorboard), mlflow (MLFLOW_TRACKING_URI, else "
                         "MLflow's local default) and wandb (offline in OUT/tracking/wandb unless WANDB_MODE or "
                         "WANDB_API_KEY is set); --resume continues the same tracked runs", RUN,
                         metavar="NAMES", resume=False)
    register: str | None = opt(None, "with --report-to mlflow: register the finished model directory as a new "
                               "version of this model in MLflow's model registry", RUN, metavar="NAME", resume=False)
    # calibrate and ngram act only when the run finishes: a resumed run may change them
    calibrate: bool = opt(True, "fit a temperature on the validation rows and fold it into the classifier, so "
                          "every probability the model gives is calibrated (single-label; --no-calibrate: off)",
                          LABELS, negatable=True, resume=False)
    ngram: str = opt("auto", "blend the encoder with `bertclf baseline`'s TF-IDF n-gram model fitted on the same "
                     "training rows, at a weight chosen on the validation rows (saved in the model directory; "
                     "predict, eval and serve use the blend): auto keeps it when the blend scores no lower than the "
                     "encoder on validation, on always, off never", LABELS, choices=("auto", "on", "off"),
                     resume=False)
    long_text: str = opt("truncate", "texts longer than --max-length: truncate (keep the start) or head-tail (the "
                         "first and last tokens); predict, eval and serve also have window", RECIPE,
                         choices=("truncate", "head-tail"), resume=True,
                         hint="window is for predict, eval and serve")
    token_store: str = opt("auto", "tokenize the training and validation rows once into memory-mapped arrays in "
                           "the bertclf cache, which later runs and every process reuse (auto: from "
                           "100,000 training rows; on; off: token ids in memory); the same batches either way",
                           RUN, choices=("auto", "on", "off"), resume=False)
    low_memory: bool = opt(False, "recompute each layer's activations in the backward pass (gradient "
                           "checkpointing) and give freed tensor memory back to the OS: the same losses and "
                           "weights; a whole-process peak of 1.1 GB instead of 2.9 GB for me5-small at batch 32 "
                           "and --max-length 128 on CPU; each step runs the forward pass twice, so it is slower",
                           RUN, resume=False)


# Settings that must match for --resume to continue the same run: the fields declared resume=True.
RESUME_KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata["resume"])


def flag_of(name: str) -> str:
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


def check_field(f, value) -> str | None:
    """What is wrong with `value` for field `f` by its declaration (type, choices, range), or None."""
    if value is None:
        return None
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        *rest, last = meta["choices"]
        return (f"must be {', '.join(rest)} or {last}, got {value!r}" if rest else f"must be {last}, got {value!r}") \
            + (f" ({meta['hint']})" if meta.get("hint") else "")
    rng = meta.get("range")
    if rng is None:
        return None
    whole = int in typing.get_args(_hints()[f.name]) or _hints()[f.name] is int
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        return f"must be a {'whole number' if whole else 'number'}, got {value!r}"
    return None if rng.admits(value) else f"{rng.describe()}, got {value}"


def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)


def validate_config(cfg: TrainConfig) -> None:
    """Every check that needs no data: one-line UserErrors naming the flag, before any work. Each field's own
    declaration (choices, range) first, then the checks that relate fields."""
    def bad(flag, why):
        raise UserError(f"--{flag}: {why}")

    for f in fields(TrainConfig):
        problem = check_field(f, getattr(cfg, f.name))
        if problem:
            raise UserError(f"{flag_of(f.name)}: {problem}")
    if (cfg.data is None) == (cfg.train is None):
        bad("train", "give exactly one of --data nsmc or --train FILE")
    if cfg.resume not in (False, True, "auto"):
        bad("resume", f"give --resume alone, or --resume auto; got {cfg.resume!r}")
    if cfg.metric == "micro_f1" and not cfg.multi_label:
        bad("metric", "micro_f1 is for --multi-label (single-label micro-F1 equals accuracy); use accuracy")
    if cfg.text_pair_col and cfg.long_text != "truncate":
        bad("long-text", f"{cfg.long_text} is for single texts; a sentence pair (--text-pair-col) is cut "
                         f"longest-first at --max-length: drop --long-text")
    if cfg.group_col and cfg.valid:
        bad("group-col", "groups the validation split of --train, and --valid FILE is given (no split): drop one")
    if cfg.texts:
        check_texts(cfg)
    if not cfg.label_sep:
        bad("label-sep", "must not be empty; give the character between the labels of a cell, e.g. ','")
    from bertclf.train.tracking import check_installed, parse_report_to

    trackers = parse_report_to(cfg.report_to)
    if cfg.register and "mlflow" not in trackers:
        bad("register", "registers the model in MLflow's model registry: add --report-to mlflow")
    check_installed(trackers)
    from bertclf.io.rows import check_encoding, parse_columns

    check_encoding(cfg.encoding)
    cfg.columns = parse_columns(cfg.columns)
    check_max_length(cfg.max_length, cfg.model)


def check_texts(cfg: TrainConfig) -> None:
    """--texts with what it cannot serve: one line each (bertclf/distill/self_train.py runs the two passes)."""
    from pathlib import Path

    if cfg.text_pair_col:
        raise UserError("--texts: unlabelled sentence pairs are not supported; drop --texts or --text-pair-col")
    if cfg.report_to != "none":
        raise UserError("--texts: --report-to is not supported with --texts yet (each pass is a run of its own); "
                        "drop one of them")
    if not Path(cfg.texts).is_file():
        raise UserError(f"--texts {cfg.texts}: file not found; give a file with a text column or one text per line")


def trims_vocab(cfg: TrainConfig) -> bool:
    """--trim-vocab unset: trim the builtin models (their 250k-piece embedding is 80% of the parameters)."""
    if cfg.trim_vocab is not None:
        return cfg.trim_vocab
    from bertclf.models.builtin import BUILTIN_MODELS

    return cfg.model in BUILTIN_MODELS


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


RESUME_NOTE = " (same on --resume)"  # how `bertclf train --help` marks the settings --resume compares


def add_train_flags(parser, names=None, defaults: dict | None = None, helps: dict | None = None,
                    grouped: bool = False) -> None:
    """Flags made from TrainConfig fields: --field-name with its type, default, help and choices. `train` takes
    every field; another command (eval, baseline, audit, distill, tune) takes the fields `names` it shares, with
    its own `defaults` (e.g. None: "the teacher's") and `helps` where its meaning differs; grouped: in train's
    help sections (for a command taking most of them)."""
    import argparse

    hints = _hints()
    defaults, helps = defaults or {}, helps or {}
    chosen = [f for f in fields(TrainConfig) if names is None or f.name in names]
    if names is not None and len(chosen) != len(set(names)):
        raise ValueError(f"no TrainConfig field: {sorted(set(names) - {f.name for f in chosen})}")
    groups = ({name: parser.add_argument_group(name) for name in (DATA, LABELS, RECIPE, RUN)}
              if names is None or grouped else {})
    for f in chosen:
        meta = dict(f.metadata)
        group = groups.get(meta["group"], parser)
        help_ = helps.get(f.name, meta["help"])
        kw = {"help": help_ + (RESUME_NOTE if meta["resume"] and names is None else ""), "dest": f.name}
        if f.name in defaults:
            kw["default"] = defaults[f.name]
        elif f.default is not MISSING:
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
            if meta["range"] is not None:  # every command that takes the flag refuses the same values
                kw["type"] = _in_range(kw["type"], meta["range"])
            kw["metavar"] = {int: "N", float: "X"}.get(base)
            for key in ("choices", "metavar"):
                if key in meta:
                    kw[key] = meta[key]
            if "required" in meta and names is None:
                kw["required"] = meta["required"] and f.name not in defaults  # --config may give it
        group.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), **kw)


def _in_range(parse, rng: Range):
    import argparse

    def parse_in_range(s: str):
        v = parse(s)
        if not rng.admits(v):
            raise argparse.ArgumentTypeError(f"{rng.describe()}, got {s}")
        return v

    return parse_in_range


def number(s: str) -> float:
    """A float flag value; argparse reports the message with the flag's name."""
    import argparse

    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
