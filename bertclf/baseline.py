"""The yardstick: TF-IDF character n-grams + logistic regression, trained in seconds on a CPU.

Every transformer result is shown beside it, so a user sees what the transformer buys.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bertclf import data as D
from bertclf.errors import UserError
from bertclf.files import check_writable, write_json
from bertclf.metrics import classification_report
from bertclf.rundir import BASELINE_FILE


def tfidf_lr(n_classes: int, seed: int = 42):
    """The baseline model: TF-IDF(char 1-4 grams) + logistic regression, as one unfitted scikit-learn Pipeline
    (also what `bertclf audit` cross-validates)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True, max_features=500_000,
                          dtype=np.float32)
    clf = LogisticRegression(C=4.0, max_iter=2000, solver="liblinear" if n_classes == 2 else "lbfgs",
                             random_state=seed)
    return make_pipeline(vec, clf)


def fit_predict(train_texts, train_y, test_texts, seed: int = 42):
    """Probabilities for test_texts from the tfidf_lr model fitted on the training texts."""
    model = tfidf_lr(len(set(train_y)), seed)
    model.fit(train_texts, train_y)
    return model.predict_proba(test_texts)


def run_baseline(data=None, train=None, test=None, text_col=None, label_col=None, data_dir=None, sample=1.0,
                 seed=42, out=None, log=print, encoding="utf-8", columns=None) -> dict:
    if (data is None) == (train is None):
        raise UserError("baseline: give exactly one of --data nsmc or --train FILE")
    if data not in (None, "nsmc"):
        raise UserError(f"--data: unknown dataset '{data}'; the builtin dataset is 'nsmc', or use --train FILE")
    if not 0 < sample <= 1:
        raise UserError(f"--sample: must be a fraction in (0, 1], got {sample}")
    if out:
        check_writable(Path(out) / BASELINE_FILE)  # now, not after the work
    if data == "nsmc":
        train_ds, test_ds = D.read_nsmc("train", data_dir, log=log), D.read_nsmc("test", data_dir, log=log)
    else:
        text_col, label_col = text_col or "text", label_col or "label"
        read = dict(encoding=encoding, columns=columns)
        train_ds = D.read_labelled(train, text_col, label_col, **read)
        if not test:
            train_ds, test_ds = D.split_valid(train_ds, 0.2, seed, other="pass --test FILE")
        else:
            test_ds = D.read_labelled(test, text_col, label_col, **read)
    train_ds = D.sample(train_ds, sample, seed, "--sample")
    labels = D.LabelMap.from_labels(train_ds.labels, train_ds.source)
    y_train = labels.encode(train_ds.labels, train_ds.source)
    y_test = labels.encode(test_ds.labels, test_ds.source)
    t0 = time.time()
    probs = fit_predict(train_ds.texts, y_train, test_ds.texts, seed)
    rep = classification_report(np.array(y_test), probs.argmax(1), labels.names)
    result = {"method": "tfidf-char-1-4gram + logistic-regression", "accuracy": rep["accuracy"],
              "macro_f1": rep["macro_f1"], "n_train": len(train_ds), "n_test": rep["n"],
              "seconds": time.time() - t0, "test_source": test_ds.source, "report": rep}
    if out:
        write_json(Path(out) / BASELINE_FILE, result)
    return result


def format_baseline(res: dict) -> str:
    return (f"TF-IDF + logistic regression: accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f} on "
            f"{res['n_test']} test rows (trained on {res['n_train']} rows in {res['seconds']:.1f}s)")
