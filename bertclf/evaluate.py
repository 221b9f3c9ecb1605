"""Stage 6, eval: score a trained model on a labelled test set (NSMC or a file); optionally dump its errors."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from bertclf import data as D
from bertclf.errors import UserError
from bertclf.files import atomic_file
from bertclf.predict import Classifier


def evaluate(model_dir: str, data: str | None = None, test: str | None = None, text_col: str | None = None,
             label_col: str | None = None, data_dir: str | None = None, errors: str | None = None,
             batch_size: int = 128, log=print) -> dict:
    """The classification report of `model_dir` on NSMC test or a labelled file."""
    if (data is None) == (test is None):
        raise UserError("eval: give exactly one of --data nsmc or --test FILE")
    if data not in (None, "nsmc"):
        raise UserError(f"--data: unknown dataset '{data}'; the builtin dataset is 'nsmc', or use --test FILE")
    clf = Classifier.load(model_dir)
    card_data = clf.card.get("data") or {}
    if data == "nsmc":
        ds = D.read_nsmc("test", data_dir, log=log)
    else:
        ds = D.read_labelled(test, text_col or card_data.get("text_col") or "text",
                             label_col or card_data.get("label_col") or "label")
    # A cell may hold the label's name, the raw value the model was trained from, or its id (bertclf/labels.py).
    y = clf.task.encode(ds.labels, ds.source)
    t0 = time.time()
    logits = clf.logits(ds.texts, batch_size)
    probs = clf.task.probs(logits)
    rep = clf.task.report(y, logits)
    rep["seconds"] = time.time() - t0
    rep["data"] = ds.summary()
    rep["model"] = str(model_dir)
    if errors:
        write_errors(errors, ds, y, probs, clf.labels, clf.task)
    return rep


def write_errors(path: str, ds: D.Dataset, y: np.ndarray, probs: np.ndarray, labels: list[str], task=None) -> int:
    """The misclassified rows with their probabilities, as TSV (or CSV by extension), written atomically
    (multi-label: the rows whose label set is not exactly right, the sets joined by the label separator)."""
    if task is not None and task.kind == "multi_label":
        decided = task.decide(probs)
        wrong = np.flatnonzero((decided != (y > 0.5)).any(1))
        names = np.array(labels)
        cells = [(task.sep.join(names[y[i] > 0.5]), task.sep.join(names[decided[i]])) for i in wrong]
    else:
        wrong = np.flatnonzero(probs.argmax(1) != y)
        cells = [(labels[y[i]], labels[probs[i].argmax()]) for i in wrong]
    delim = "," if Path(path).suffix.lower() == ".csv" else "\t"
    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delim)
        w.writerow(["text", "label", "predicted", "score"] + [f"p_{lab}" for lab in labels])
        for i, (true, predicted) in zip(wrong, cells):
            w.writerow([ds.texts[i], true, predicted, f"{probs[i].max():.6f}"] + [f"{p:.6f}" for p in probs[i]])
    return len(wrong)
