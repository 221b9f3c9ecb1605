"""The labelled rows a model can be checked on: its own validation split, rebuilt from bertclf.json, or a file.

bertclf.json keeps the run's arguments (data source, --sample, --seed, --valid-frac, columns) and a summary
of the validation rows (source file's sha256, row and label counts); eval_predictions.npz keeps their label
ids in order. The split is rebuilt with the same data.py calls `bertclf train` makes and accepted only if all
of that matches, so a changed data file or a changed split rule is noticed instead of checking on other rows.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from bertclf.data import dataset as D
from bertclf.errors import UserError
from bertclf.rundir.layout import PREDICTIONS_FILE as PREDICTIONS


def check_rows(model_dir: Path, card: dict, labels: list[str], check_file: str | None = None
               ) -> tuple[list[str], np.ndarray, str]:
    """(texts, label ids, where they come from): --check FILE's rows, else the model's validation rows (a pair
    model's texts are (text, text_pair) tuples).
    Raises UserError naming what is missing when neither is available."""
    if check_file:
        return read_check_file(check_file, card, labels)
    ds, why = rebuild_validation(model_dir, card)
    if ds is None:
        raise UserError(f"{model_dir}: cannot rebuild the validation rows to check the int8 model on ({why}); "
                        f"give a labelled file in the training's format ({training_format(card)}) with --check FILE")
    y = _label_ids(ds, card, labels)
    npz = model_dir / PREDICTIONS
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            kept = f["valid_y"] if "valid_y" in f.files else None
        if kept is not None and not np.array_equal(kept, y):
            raise UserError(f"{model_dir}: the rebuilt validation rows' labels differ from {PREDICTIONS}'s (the data "
                            f"changed since training?); give a labelled file with --check FILE")
    return ds.inputs(), y, f"the model's {len(ds)} validation rows (rebuilt from bertclf.json)"


# The flags of `bertclf export`: advice in an error may name these and no others.
EXPORT_FLAGS = ("--onnx", "--int8", "--check", "--min-agreement", "--out")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def read_check_file(check_file: str, card: dict, labels: list[str]) -> tuple[list[str], np.ndarray, str]:
    """--check FILE's rows, read in the training's format (data_spec: its text/label columns, --columns of a
    header-less file, encoding; the task: its label separator). export has no flags to choose columns or an
    encoding, so an error whose advice names such a flag keeps what is wrong and says which format the file
    must have."""
    from bertclf.io.data_spec import data_spec

    spec = data_spec(card)
    multi = (card.get("classification") or {}).get("type") == "multi_label"
    try:  # a multi-label row may have no label, as in training
        ds = D.read_labelled(check_file, spec.text_col, spec.label_col, **spec.read_kwargs(),
                             allow_empty_label=multi, pair_col=spec.text_pair_col)
        y = _label_ids(ds, card, labels)
    except UserError as e:
        msg = str(e)
        if set(FLAG.findall(msg)) <= set(EXPORT_FLAGS):
            raise
        what = msg.split("; ")[0].replace("but --columns names", "but the training's columns are")
        what = FLAG.sub(lambda m: m[0] if m[0] in EXPORT_FLAGS else f"the training's {m[0][2:].replace('-', ' ')}",
                        what)
        raise UserError(f"--check {what}; write the file in the training's format ({training_format(card)})") from None
    return ds.inputs(), y, f"{check_file} ({len(ds)} rows)"


def training_format(card: dict) -> str:
    """The training's file format in words, for advice, e.g. "tab-separated, no header line, columns
    id,text,label; text in column 'text', labels in 'label', several separated by ','; encoding cp949"."""
    from bertclf.io.data_spec import data_spec
    from bertclf.io.rows import file_format

    spec = data_spec(card)
    train = (card.get("args") or {}).get("train")
    try:
        fmt = file_format(Path(train)) if train else None
    except UserError:
        fmt = None
    task = card.get("classification") or {}  # the label separator is the task's (bertclf/data/task.py)
    multi = task.get("type") == "multi_label"
    labels = f"labels in '{spec.label_col}'" + (f", several separated by '{task.get('label_sep', ',')}'"
                                                 if multi else "")
    if fmt == "jsonl":
        layout = f"JSON lines; text in field '{spec.text_col}', {labels}"
    else:
        layout = ({"tsv": "tab-separated, ", "csv": "comma-separated, "}.get(fmt, "")
                  + (f"no header line, columns {','.join(spec.columns)}" if spec.columns else "a header line")
                  + f"; text in column '{spec.text_col}', {labels}")
    return f"{layout}; encoding {spec.encoding}"


def rebuild_validation(model_dir: Path, card: dict) -> tuple[D.Dataset | None, str]:
    """The validation split `bertclf train` used, or (None, why not)."""
    args, kept = card.get("args") or {}, (card.get("data") or {}).get("valid") or {}
    if not args or not kept:
        return None, "bertclf.json has no training arguments or validation summary"
    if not (args.get("data") or args.get("train")):
        return None, "bertclf.json names no training data"
    from bertclf.train.config import config_from_dict

    try:  # the same call `bertclf train` makes, so the same rows in the same order
        _, valid, _ = D.load_training_data(config_from_dict(args | {"test": None}), log=lambda s: None)
    except (UserError, OSError) as e:
        return None, f"reading the training data: {str(e)[:160]}"
    if kept.get("sha256") and valid.sha256 != kept["sha256"]:
        return None, f"{valid.source.split(' (')[0]} changed since training (sha256 differs)"
    counts = {str(k): v for k, v in Counter(valid.labels).items()}
    if len(valid) != kept.get("rows") or counts != {str(k): v for k, v in (kept.get("label_counts") or {}).items()}:
        return None, f"the rebuilt split has {len(valid)} rows, bertclf.json says {kept.get('rows')}"
    return valid, ""


def _label_ids(ds: D.Dataset, card: dict, labels: list[str]) -> np.ndarray:
    """The rows' labels as the model's ids (multi-label: multi-hot rows): a cell may hold a label's name, the raw
    value the model was trained from (NSMC's 0/1) or its id (bertclf/data/labels.py); unknown ones are one line."""
    from bertclf.data.task import task_from_card

    return task_from_card(card, labels).encode(ds.labels, ds.source)
