"""Reading a run directory for a report: the model card, the training log, the saved predictions, a baseline.

A run that stopped early (log only, no card yet) still loads; what is missing goes into Run.notes, to be named
on the page. A directory with neither the card nor the log raises UserError.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.rundir.layout import BASELINE_FILE, CARD_FILE, LOG_FILE, PREDICTIONS_FILE  # noqa: F401 (re-exported)



@dataclass
class Run:
    dir: Path
    card: dict | None
    train_log: list[dict]                  # training windows: step, epoch, loss, acc, lr, samples_per_s, ...
    valid_log: list[dict]                  # validations: step, epoch, valid_accuracy, valid_macro_f1, best
    preds: dict[str, np.ndarray] | None    # eval_predictions.npz
    baseline: dict | None
    baseline_source: str | None = None
    notes: list[str] = field(default_factory=list)  # what is missing or was skipped, shown on the page

    @property
    def name(self) -> str:
        return self.dir.name or str(self.dir)


def load_run(run_dir: str | Path) -> Run:
    """Read what a run directory holds; UserError (one line) when it is not a bertclf run."""
    d = Path(run_dir).expanduser()
    hint = "give a directory written by 'bertclf train --out DIR'"
    if not d.exists():
        raise UserError(f"{d}: no such directory; {hint}")
    if not d.is_dir():
        raise UserError(f"{d}: not a directory; {hint}")
    card_path, log_path = d / CARD_FILE, d / LOG_FILE
    if not card_path.is_file() and not log_path.is_file():
        raise UserError(f"{d}: not a bertclf run (no {CARD_FILE} or {LOG_FILE}); {hint}")
    d = d.resolve()
    notes: list[str] = []
    card = read_card(card_path, hint, notes)
    train_log, valid_log = read_log(log_path, notes)
    preds = read_predictions(d / PREDICTIONS_FILE, notes)
    baseline, baseline_source = read_baseline(d, card, notes)
    return Run(d, card, train_log, valid_log, preds, baseline, baseline_source, notes)


def read_card(path: Path, hint: str, notes: list[str]) -> dict | None:
    if not path.is_file():
        notes.append(f"no {CARD_FILE} (the run has not finished): summary and metrics are incomplete")
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the model card ({e}); it is damaged, train again") from None
    if not isinstance(card, dict):
        raise UserError(f"{path}: not a bertclf model card (not a JSON object); {hint}")
    return card


def read_log(path: Path, notes: list[str]) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of train_log.jsonl, each sorted by step, one per step (the last
    written wins); unreadable lines (a crash mid-write) are skipped and counted in `notes`."""
    if not path.is_file():
        notes.append(f"no {LOG_FILE}: no training curves")
        return [], []
    train, valid, bad = {}, {}, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                step = int(rec["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1
                continue
            if finite(rec.get("loss")):
                train[step] = rec
            elif finite(rec.get("valid_accuracy")):
                valid[step] = rec
    if bad:
        notes.append(f"{LOG_FILE}: skipped {bad} unreadable line(s)")
    return [train[s] for s in sorted(train)], [valid[s] for s in sorted(valid)]


def read_predictions(path: Path, notes: list[str]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        notes.append(f"no {PREDICTIONS_FILE}: no score, calibration or length plots")
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged file only costs its plots
        notes.append(f"{PREDICTIONS_FILE} unreadable ({type(e).__name__}): no score, calibration or length plots")
        return None


def read_baseline(d: Path, card: dict | None, notes: list[str]) -> tuple[dict | None, str | None]:
    """The TF-IDF baseline: the card's, else a baseline.json beside it; (result, where it came from)."""
    if card and isinstance(card.get("baseline"), dict):
        return card["baseline"], CARD_FILE
    if not (d / BASELINE_FILE).is_file():
        return None, None
    try:
        b = json.loads((d / BASELINE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        notes.append(f"{BASELINE_FILE} unreadable: baseline not shown")
        return None, None
    return (b, BASELINE_FILE) if isinstance(b, dict) and "accuracy" in b else (None, None)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def split_arrays(preds: dict | None, split: str):
    """(y, probs, tokens or None) of one split of the saved predictions; None when absent or inconsistent."""
    p = preds or {}
    y, probs, tokens = p.get(f"{split}_y"), p.get(f"{split}_probs"), p.get(f"{split}_tokens")
    if y is None or probs is None or probs.ndim != 2 or len(y) != len(probs) or len(y) == 0:
        return None
    if tokens is not None and len(tokens) != len(y):
        tokens = None
    return y.astype(np.int64), probs, tokens


def is_multi_label(run: Run) -> bool:
    return ((run.card or {}).get("classification") or {}).get("type") == "multi_label"


def prediction_split(run: Run) -> str | None:
    """The split the prediction plots use: test when the run scored one, else validation (none for multi-label:
    the score, calibration and length plots are single-label plots)."""
    if is_multi_label(run):
        return None
    for split in ("test", "valid"):
        if split_arrays(run.preds, split) is not None:
            return split
    return None


def label_names(run: Run, k: int) -> list[str]:
    """The k class names: from the predictions file, else the card, else 0..k-1."""
    names = (run.preds or {}).get("labels")
    if names is not None and len(names) == k:
        return [str(x) for x in names]
    names = (run.card or {}).get("labels")
    return [str(x) for x in names] if names and len(names) == k else [str(i) for i in range(k)]
