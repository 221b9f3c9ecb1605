"""The labelled rows a model can be checked on: its own validation split, rebuilt from bertclf.json, or a file.

bertclf.json keeps the run's arguments (data source, --sample, --seed, --valid-frac, columns) and a summary
of the validation rows (source file's sha256, row and label counts); eval_predictions.npz keeps their label
ids in order. The split is rebuilt with the same data.py calls `bertclf train` makes and accepted only if all
of that matches, so a changed data file or a changed split rule is noticed instead of checking on other rows.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from bertclf import data as D
from bertclf.errors import UserError
from bertclf.rundir import PREDICTIONS_FILE as PREDICTIONS


def check_rows(model_dir: Path, card: dict, labels: list[str], check_file: str | None = None
               ) -> tuple[list[str], np.ndarray, str]:
    """(texts, label ids, where they come from): --check FILE's rows, else the model's validation rows.
    Raises UserError naming what is missing when neither is available."""
    if check_file:
        cols = card.get("data") or {}
        ds = D.read_labelled(check_file, cols.get("text_col") or "text", cols.get("label_col") or "label")
        return ds.texts, _label_ids(ds, card, labels), f"{check_file} ({len(ds)} rows)"
    ds, why = rebuild_validation(model_dir, card)
    if ds is None:
        raise UserError(f"{model_dir}: cannot rebuild the validation rows to check the int8 model on ({why}); "
                        f"give a labelled file with --check FILE")
    y = _label_ids(ds, card, labels)
    npz = model_dir / PREDICTIONS
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            kept = f["valid_y"] if "valid_y" in f.files else None
        if kept is not None and not np.array_equal(kept, y):
            raise UserError(f"{model_dir}: the rebuilt validation rows' labels differ from {PREDICTIONS}'s (the data "
                            f"changed since training?); give a labelled file with --check FILE")
    return ds.texts, y, f"the model's {len(ds)} validation rows (rebuilt from bertclf.json)"


def rebuild_validation(model_dir: Path, card: dict) -> tuple[D.Dataset | None, str]:
    """The validation split `bertclf train` used, or (None, why not)."""
    args, kept = card.get("args") or {}, (card.get("data") or {}).get("valid") or {}
    if not args or not kept:
        return None, "bertclf.json has no training arguments or validation summary"
    if not (args.get("data") or args.get("train")):
        return None, "bertclf.json names no training data"
    from bertclf.config import config_from_dict

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
    value the model was trained from (NSMC's 0/1) or its id (bertclf/labels.py); unknown ones are one line."""
    from bertclf.task import task_from_card

    return task_from_card(card, labels).encode(ds.labels, ds.source)
