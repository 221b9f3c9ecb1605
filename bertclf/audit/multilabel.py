"""Label audit of a multi-label file (`bertclf audit --multi-label`): which rows' label sets look wrong.

Out-of-fold probabilities per label from one-vs-rest TF-IDF + logistic regression (the multi-label baseline's
model, fitted on the other folds of a seeded KFold: label sets cannot be stratified), then cleanlab's multi-label
confident learning (cleanlab.multilabel_classification: find_label_issues flags a row when any of its labels
looks wrong; get_label_quality_scores scores the whole set, low = suspect). The noise estimate is per label:
cleanlab's estimate_joint of the given and true values of that label, one-vs-rest; the overall rate is their
mean, the estimated share of (row, label) cells that are wrong. Same interface as bertclf.audit.label_issues.Audit, so the
TSV, page and summary are written by the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertclf.data import dataset as D

THRESHOLD = 0.5  # suggested labels: out-of-fold probability at least this


@dataclass
class MultiLabelAudit:
    rows: np.ndarray          # data row in the file of each audited text
    texts: list[str]
    labels: np.ndarray        # given label sets, (n, k) 0/1
    names: list[str]          # label id -> name
    probs: np.ndarray         # out-of-fold probabilities (n, k), one per label
    scores: np.ndarray        # label-set quality, 0..1, low = suspect
    ranked: np.ndarray        # indices of the flagged rows, most suspect first
    label_noise: np.ndarray   # per label: the estimated share of rows whose value of it is wrong
    sep: str = ","
    lines: np.ndarray | None = None

    @property
    def noise_rate(self) -> float:
        return float(self.label_noise.mean())

    def summary(self) -> dict:
        n = len(self.labels)
        pred = self.probs >= THRESHOLD
        tp = float((pred & (self.labels > 0)).sum())
        micro_f1 = 2 * tp / max(pred.sum() + self.labels.sum(), 1)
        disagree = pred[self.ranked] != (self.labels[self.ranked] > 0)  # flagged rows: which labels they dispute
        per_class = [{"label": name, "rows": int(self.labels[:, i].sum()), "suspected": int(disagree[:, i].sum()),
                      "noise_rate": float(self.label_noise[i])} for i, name in enumerate(self.names)]
        return {"rows": n, "oof_name": "out-of-fold micro-F1", "oof_score": float(micro_f1),
                "suspected": int(len(self.ranked)), "suspected_share": len(self.ranked) / n if n else 0.0,
                "noise_rate": self.noise_rate, "per_class": per_class}

    def _set(self, row: np.ndarray, order: np.ndarray) -> str:
        return self.sep.join(self.names[i] for i in order if row[i])

    def records(self, limit: int | None = None) -> list[dict]:
        idx = self.ranked if limit is None else self.ranked[:limit]
        out = []
        for i in idx:
            best_first = np.argsort(-self.probs[i], kind="stable")
            out.append({"row": int(self.rows[i]), **({"line": int(self.lines[i])} if self.lines is not None else {}),
                        "text": self.texts[i], "given_label": self._set(self.labels[i], np.arange(len(self.names))),
                        "suggested_label": self._set(self.probs[i] >= THRESHOLD, best_first),
                        "score": float(self.scores[i])})
        return out


def out_of_fold_probs(texts: list[str], y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Per label, the probability from the multi-label baseline (bertclf.models.baseline.fit_multilabel: one-vs-rest
    TF-IDF + LR; a label constant in a fold's training rows predicts that constant) fitted on the other folds."""
    from sklearn.model_selection import KFold

    from bertclf.models.baseline import fit_multilabel

    texts = np.asarray(texts, dtype=object)
    probs = np.zeros(y.shape, dtype=np.float64)
    for fit, held in KFold(n_splits=folds, shuffle=True, random_state=seed).split(texts):
        probs[held] = fit_multilabel(texts[fit], y[fit], seed)(texts[held])
    return probs


def audit_multilabel(ds: D.Dataset, rows: np.ndarray, folds: int, seed: int, log, label_col: str, sep: str,
                     label_names: str | None) -> MultiLabelAudit:
    from cleanlab.count import estimate_joint
    from cleanlab.multilabel_classification import get_label_quality_scores
    from cleanlab.multilabel_classification.filter import find_label_issues

    from bertclf.data.task import make_task
    from bertclf.train.config import TrainConfig

    cfg = TrainConfig(out="", multi_label=True, label_sep=sep, label_names=label_names, label_col=label_col)
    task = make_task(cfg, ds.labels, ds.source)
    y = np.asarray(task.encode(ds.labels, ds.source), dtype=np.int64)
    log(f"audit: {len(ds):,} rows of {ds.source}, {y.shape[1]} labels; {folds}-fold one-vs-rest TF-IDF + "
        f"logistic regression, then cleanlab (multi-label)")
    probs = out_of_fold_probs(ds.texts, y, folds, seed)
    used = np.flatnonzero(y.sum(0) > 0)  # cleanlab's classes are the labels some row has
    given = [[int(np.searchsorted(used, k)) for k in np.flatnonzero(row)] for row in y]
    scores = get_label_quality_scores(given, probs[:, used])
    ranked = find_label_issues(given, probs[:, used], return_indices_ranked_by="self_confidence", n_jobs=1)
    noise = np.zeros(y.shape[1])
    for k in used:
        if y[:, k].min() < y[:, k].max():
            p = np.clip(probs[:, k], 1e-6, 1 - 1e-6)
            noise[k] = 1.0 - np.trace(estimate_joint(y[:, k], np.stack([1 - p, p], axis=1)))
    return MultiLabelAudit(rows, ds.texts, y, task.labels.names, probs, np.asarray(scores),
                           np.asarray(ranked, dtype=np.int64), noise, sep)
