"""`bertclf eval`: score a trained model directory on a labelled test set (NSMC or a file), optionally dumping its
errors. (Scoring during training, sharded over processes, is bertclf/train/scoring.py.)"""
from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import numpy as np

from bertclf.data import dataset as D
from bertclf.data.batches import INFERENCE_BATCH, check_batch_size
from bertclf.io.data_spec import data_spec
from bertclf.errors import UserError
from bertclf.io.files import atomic_file, check_writable
from bertclf.io.rows import row_positions


def evaluate(model_dir: str, data: str | None = None, test: str | None = None, text_col: str | None = None,
             label_col: str | None = None, data_dir: str | None = None, errors: str | None = None,
             batch_size: int = INFERENCE_BATCH, log=print, precision: str = "auto", encoding: str = "utf-8",
             columns: list[str] | None = None, long_text: str | None = None, stride: int | None = None,
             text_pair_col: str | None = None, compile: str = "auto") -> dict:
    """The classification report of `model_dir` on NSMC test or a labelled file (empty texts dropped, and said;
    texts over the model's max_length counted and said; long_text / stride: bertclf/data/long_text.py)."""
    check_batch_size(batch_size)
    if errors:
        check_writable(errors)  # now, not after the work
    if (data is None) == (test is None):
        raise UserError("eval: give exactly one of --data nsmc or --test FILE")
    if data not in (None, "nsmc"):
        raise UserError(f"--data: unknown dataset '{data}'; the builtin dataset is 'nsmc', or use --test FILE")
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(model_dir, precision=precision, long_text=long_text, stride=stride, compile=compile)
    if text_pair_col and clf.pair_col is None:
        raise UserError(f"--text-pair-col {text_pair_col}: {model_dir} reads single texts (trained without "
                        f"--text-pair-col); drop the flag or use a model trained on pairs")
    spec = data_spec(clf.card, text_col=text_col, label_col=label_col, columns=columns, encoding=encoding,
                     text_pair_col=text_pair_col)
    if data == "nsmc":
        ds = D.read_nsmc("test", data_dir, log=log)
        if any(clf.task.labels.resolve(name) is None for name in set(ds.labels)):
            # a model trained on the NSMC file itself (--train ratings_train.txt) knows the cells 0/1, not their names
            cell = {name: c for c, name in D.NSMC_LABELS.items()}
            ds = dataclasses.replace(ds, labels=[cell[name] for name in ds.labels])
    else:
        ds = D.read_labelled(test, spec.text_col, spec.label_col, **spec.read_kwargs(),
                             allow_empty_label=clf.multi_label,  # a multi-label row may have no label
                             pair_col=spec.text_pair_col)
    if ds.dropped_empty:
        log(f"{ds.source}: {ds.dropped_empty} row(s) with an empty text{' (either side)' if ds.pairs else ''} "
            f"dropped; scoring {len(ds)} rows")
    # A cell may hold the label's name, the raw value the model was trained from, or its id (bertclf/data/labels.py).
    # integer cells read as label ids are said in one line, and refused when the training counts show another order
    y = clf.task.encode(ds.labels, ds.source, log=log,
                        train_counts=((clf.card.get("data") or {}).get("train") or {}).get("label_counts"))
    t0 = time.time()
    parts: dict = {}  # a model with an n-gram partner: each side's logits alone (bertclf/models/ngram.py)
    logits, cut = clf.logits_and_cut(ds.inputs(), batch_size, parts=parts)
    log(f"{cut} of {len(ds)} rows longer than {clf.max_length} tokens: " + {
        "truncate": "cut longest-first (tokens off the longer text)" if ds.pairs else "cut to their first tokens", "head-tail": "cut to their first and last tokens",
        "window": f"scored in overlapping chunks (stride {clf.stride}), logits averaged"}[clf.long_text]
        + (" (--long-text window or head-tail reads more of them)" if cut and clf.long_text == "truncate" else ""))
    probs = clf.task.probs(logits)
    rep = clf.task.report(y, logits)
    rep["seconds"] = time.time() - t0
    rep["data"] = ds.summary()
    rep["model"] = str(model_dir)
    rep["precision"] = clf.precision
    if clf.compiled is not None:  # the shapes compiled and their first batches' seconds, compiling included
        rep["compiled"] = clf.compiled.record()
    rep["long_text"] = {"mode": clf.long_text, "max_length": clf.max_length, "rows_longer": cut}
    if clf.long_text == "window":
        rep["long_text"]["stride"] = clf.stride
    if parts:  # the report above is the blend's; beside it each side alone, and the weight on the encoder
        rep["components"] = clf.component_reports(y, parts)
        rep["ngram_weight"] = clf.ngram_weight
    if errors:
        path, col, read = (test, spec.text_col, spec.read_kwargs()) if test else (ds.source, D.NSMC_TEXT_COL, {})
        positions = row_positions(path, col, lambda t: not D.is_empty_text(t), **read,
                                  pair_col=spec.text_pair_col if test else None)
        write_errors(errors, ds, y, probs, clf.labels, clf.task, positions)
    return rep


def write_errors(path: str, ds: D.Dataset, y: np.ndarray, probs: np.ndarray, labels: list[str], task=None,
                 positions: tuple[list[int], list[int]] | None = None) -> int:
    """The misclassified rows with their probabilities, as TSV (or CSV by extension), written atomically
    (multi-label: the rows whose label set is not exactly right, the sets joined by the label separator).
    `positions`: each row's 0-based data row and 1-based file line (bertclf.io.rows.row_positions), so an error can
    be found in the file even when texts repeat; without it the row is the index among the scored rows."""
    rows, lines = positions if positions is not None else (range(len(ds)), None)
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
        w.writerow(["row", "line", "text"] + (["text_pair"] if ds.pairs else []) + ["label", "predicted", "score"]
                   + [f"p_{lab}" for lab in labels])
        for i, (true, predicted) in zip(wrong, cells):
            w.writerow([rows[i], lines[i] if lines is not None else "", ds.texts[i]]
                       + ([ds.pairs[i]] if ds.pairs else [])
                       + [true, predicted, f"{probs[i].max():.6f}"] + [f"{p:.6f}" for p in probs[i]])
    return len(wrong)
