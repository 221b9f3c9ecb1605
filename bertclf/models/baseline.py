"""The yardstick: TF-IDF character n-grams + logistic regression, trained in seconds on a CPU.

Every transformer result is shown beside it, so a user sees what the transformer buys.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bertclf.data import dataset as D
from bertclf.errors import UserError
from bertclf.io.files import check_writable, write_json
from bertclf.data import task as T
from bertclf.data.metrics import classification_report, multilabel_report
from bertclf.rundir.layout import BASELINE_FILE


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True, max_features=500_000,
                           dtype=np.float32)


class PairFeatures:
    """Sentence pairs (text, text_pair) -> [n-grams of the first text | of the second | their elementwise
    product]: one TF-IDF vocabulary fitted on both sides, so the product block holds the n-grams the two texts
    share (weighted by both); a linear model on the two bags alone cannot see any relation between them."""

    def __init__(self):
        self.vectorizer = _vectorizer()

    def get_params(self, deep=True):  # scikit-learn's estimator protocol (cloning in cross-validation)
        return {}

    def set_params(self, **params):
        return self

    def fit(self, pairs, y=None):
        a, b = zip(*pairs)
        self.vectorizer.fit(list(a) + list(b))
        return self

    def transform(self, pairs):
        from scipy.sparse import hstack

        a, b = zip(*pairs)
        xa, xb = self.vectorizer.transform(a), self.vectorizer.transform(b)
        return hstack([xa, xb, xa.multiply(xb)], format="csr")

    def fit_transform(self, pairs, y=None):
        return self.fit(pairs).transform(pairs)


def features(pairs: bool):
    """The baseline's featuriser: TF-IDF n-grams of a text, or PairFeatures of a sentence pair."""
    return PairFeatures() if pairs else _vectorizer()


def tfidf_lr(n_classes: int, seed: int = 42, pairs: bool = False):
    """The baseline model: TF-IDF(char 1-4 grams) + logistic regression, as one unfitted scikit-learn Pipeline
    (also what `bertclf audit` cross-validates); pairs: its inputs are (text, text_pair) tuples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = LogisticRegression(C=4.0, max_iter=2000, solver="liblinear" if n_classes == 2 else "lbfgs",
                             random_state=seed)
    return make_pipeline(features(pairs), clf)


def is_pairs(inputs) -> bool:
    return len(inputs) > 0 and isinstance(inputs[0], tuple)


def fit_predict(train_texts, train_y, test_texts, n_classes: int, seed: int = 42):
    """Probabilities (one column per label id, 0..n_classes-1) for test_texts from the tfidf_lr model fitted on
    the training texts. A label no training row has gets probability 0: scikit-learn's columns are only the
    classes it saw (model.classes_), so they are put back in their label-id places."""
    model = tfidf_lr(len(set(train_y)), seed, pairs=is_pairs(train_texts))
    model.fit(train_texts, train_y)
    probs = np.zeros((len(test_texts), n_classes))
    probs[:, model.classes_] = model.predict_proba(test_texts)
    return probs


def fit_multilabel_model(texts, y: np.ndarray, seed: int = 42):
    """The multi-label baseline's fitted parts: (vectorizer, one-vs-rest LR over the labels in `keep`, keep (k,)
    bool, the training prior (k,): the constant score of the labels always on or always off)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    vec = features(is_pairs(texts))
    x = vec.fit_transform(texts)
    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))  # a label always on or always off has a constant score
    clf = OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=2000, solver="liblinear", random_state=seed))
    clf.fit(x, y[:, keep])
    return vec, clf, keep, y.mean(0)


def fit_multilabel(texts, y: np.ndarray, seed: int = 42):
    """The multi-label baseline model: TF-IDF + one-vs-rest logistic regression fitted on texts with label sets y
    (n, k); returns texts -> probabilities (n, k) (also what `bertclf audit --multi-label` cross-validates)."""
    vec, clf, keep, prior = fit_multilabel_model(texts, y, seed)

    def proba(t):
        p = np.tile(prior, (len(t), 1)).astype(np.float32)
        p[:, keep] = clf.predict_proba(vec.transform(t))
        return p
    return proba


def fit_predict_multilabel(train_texts, train_y: np.ndarray, test_texts, seed: int = 42):
    """Multi-label: one-vs-rest logistic regression; per-label thresholds tuned on a seeded 20% of the training
    rows (model fitted on the rest), then the model refitted on every training row. (test probs, thresholds)"""
    from bertclf.data.metrics import tune_thresholds

    idx = np.random.default_rng(seed).permutation(len(train_texts))
    cut = len(idx) // 5
    tune, rest = idx[:cut], idx[cut:]
    proba = fit_multilabel([train_texts[i] for i in rest], train_y[rest], seed)
    thresholds = tune_thresholds(train_y[tune], proba([train_texts[i] for i in tune]))
    return fit_multilabel(list(train_texts), train_y, seed)(list(test_texts)), thresholds


def run_baseline(data=None, train=None, test=None, text_col=None, label_col=None, data_dir=None, sample=1.0,
                 seed=42, out=None, log=print, encoding="utf-8", columns=None, multi_label=False, label_sep=",",
                 label_names=None, text_pair_col=None, group_col=None) -> dict:
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
        read = dict(encoding=encoding, columns=columns, allow_empty_label=multi_label, pair_col=text_pair_col)
        train_ds = D.read_labelled(train, text_col, label_col, **read, group_col=None if test else group_col)
        if not test:
            train_ds, test_ds = D.split_valid(train_ds, 0.2, seed, other="pass --test FILE", multi_label=multi_label)
        else:
            test_ds = D.read_labelled(test, text_col, label_col, **read)
    train_ds = D.sample(train_ds, sample, seed, "--sample", multi_label=multi_label)
    cfg = SimpleNamespace(multi_label=multi_label, label_sep=label_sep, label_names=label_names, metric=None,
                          label_col=label_col)
    task = T.make_task(cfg, train_ds.labels, train_ds.source, raw=D.NSMC_LABELS if data == "nsmc" else None)
    y_train = task.encode(train_ds.labels, train_ds.source)
    y_test = task.encode(test_ds.labels, test_ds.source)
    t0 = time.time()
    if multi_label:
        probs, task.thresholds = fit_predict_multilabel(train_ds.inputs(), y_train, test_ds.inputs(), seed)
        rep = multilabel_report(y_test, task.decide(probs), task.labels.names, task.thresholds)
        method = "tfidf-char-1-4gram + one-vs-rest logistic-regression, thresholds tuned on 20% of train"
    else:
        probs = fit_predict(train_ds.inputs(), y_train, test_ds.inputs(), len(task.labels.names), seed)
        rep = classification_report(y_test, probs.argmax(1), task.labels.names)
        method = "tfidf-char-1-4gram + logistic-regression"
    if train_ds.pairs is not None:
        method = method.replace("tfidf-char-1-4gram", "tfidf-char-1-4gram of each text and their product")
    result = {"method": method, "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
              "weighted_f1": rep["weighted_f1"], **({"micro_f1": rep["micro_f1"]} if multi_label else {}),
              "n_train": len(train_ds), "n_test": rep["n"],
              "seconds": time.time() - t0, "test_source": test_ds.source, "report": rep}
    if out:
        write_json(Path(out) / BASELINE_FILE, result)
    return result


def format_baseline(res: dict) -> str:
    if "micro_f1" in res:
        return (f"TF-IDF + one-vs-rest logistic regression: micro-F1 {res['micro_f1']:.4f}, macro-F1 "
                f"{res['macro_f1']:.4f}, subset accuracy {res['accuracy']:.4f} on {res['n_test']} test rows "
                f"(trained on {res['n_train']} rows in {res['seconds']:.1f}s)")
    return (f"TF-IDF + logistic regression: accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f}, "
            f"weighted-F1 {res['weighted_f1']:.4f} on "
            f"{res['n_test']} test rows (trained on {res['n_train']} rows in {res['seconds']:.1f}s)")
